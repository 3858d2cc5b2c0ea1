"""Oracle labels: the true identities or outfits in place of the pseudo-labels.

Unsupervised re-ID can fail at two places: the clustering (pseudo-labels that do not follow
people or outfits) or the representation (features that do not carry the clothes-invariant
signal even when the labels are right). Training the same engine on the true identities (the
supervised upper bound of USL papers) or on the true outfits (what a perfect clothes-level
clustering would give) tells the two apart. These labels need annotations the method never
sees: results trained on them are diagnostics, never the method's results.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from maskcl.cluster.pseudo_labels import PseudoLabels
from maskcl.data.records import Record

ORACLES = ("identity", "clothes")


def oracle_labels(records: Sequence[Record], kind: str) -> PseudoLabels:
    """Labels ``0..C−1`` in record order from ``pid`` (``identity``) or ``clothes_id`` (``clothes``)."""
    if kind not in ORACLES:
        raise ValueError(f"cluster.oracle must be one of {', '.join(ORACLES)}, got {kind!r}")
    keys = [r.pid if kind == "identity" else r.clothes_id for r in records]
    index = {key: i for i, key in enumerate(sorted(set(keys)))}
    labels = np.array([index[key] for key in keys], dtype=np.int64)
    return PseudoLabels(
        labels=labels, n_clusters=len(index), n_unclustered=0, n_refined_out=0, n_noise=0,
        labels_dbscan=labels.copy(), labels_tight=labels.copy(),
    )
