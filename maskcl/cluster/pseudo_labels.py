"""Pseudo-labels of one epoch: kNN → sparse Jaccard → DBSCAN (eps, tight eps) → refinement.

This is the authors' per-epoch labelling (reference/paper.md §2.3) on sparse data:

1. exact (or approximate) kNN of the RGB memory, k-reciprocal Jaccard distance (k1, k2);
2. DBSCAN at ``eps`` and at the tight ``eps − eps_gap`` (``min_samples``), precomputed metric;
   un-clustered samples are kept, each as its own singleton label;
3. with ``refine``, the cluster refinement rule moves ill-fitting samples out to singletons.

Labels are renumbered so that clusters (≥ 2 members, in the order of their DBSCAN label) come
first as ``0..n_clusters−1`` and every singleton follows in sample order. The authors' numbering
differs (noise after clusters, refined-out samples appended, clusters emptied by refinement
left as gaps); only the numbering differs, not the partition.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskcl.cluster.dbscan import dbscan_sparse, singleton_labels
from maskcl.cluster.jaccard import jaccard_pairs, jaccard_weights, search_width
from maskcl.cluster.knn import knn as knn_search
from maskcl.cluster.refine import refine_keep
from maskcl.errors import ClusteringError

logger = logging.getLogger(__name__)

SUPPORTS = ("auto", "full", "bounded")
# from this N on, ``support="auto"`` stores the bounded support (see generate_pseudo_labels)
BOUNDED_SUPPORT_MIN_N = 100_000


@dataclass
class PseudoLabels:
    """Result of :func:`generate_pseudo_labels`.

    ``labels`` [N] int64 in ``0..n_clusters+n_unclustered−1``: clusters first, then singletons.
    ``labels_dbscan`` / ``labels_tight`` are the raw DBSCAN labels (−1 = noise) at eps and at
    the tight eps, kept for diagnostics. ``timings`` holds seconds per step (``knn_s``,
    ``jaccard_s`` and its sub-steps, ``dbscan_s``, ``refine_s``, ``total_s``).
    """

    labels: np.ndarray
    n_clusters: int
    n_unclustered: int
    n_refined_out: int
    n_noise: int
    labels_dbscan: np.ndarray
    labels_tight: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_labels(self) -> int:
        return self.n_clusters + self.n_unclustered


def relabel_clusters_first(groups: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Renumber groups: ≥2-member groups 0..C−1 (by group id), singletons after in sample order.

    Returns (labels [N] int64, n_clusters, n_singletons).
    """
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    multi = counts >= 2
    new_id = np.full(uniq.size, -1, dtype=np.int64)
    new_id[multi] = np.arange(int(multi.sum()))
    labels = new_id[inv]
    single = labels < 0
    n_clusters = int(multi.sum())
    labels[single] = n_clusters + np.arange(int(single.sum()))
    return labels, n_clusters, int(single.sum())


def generate_pseudo_labels(
    feats: Any,
    eps: float = 0.6,
    eps_gap: float = 0.02,
    k1: int = 30,
    k2: int = 6,
    min_samples: int = 4,
    refine: bool = True,
    ratio_cluster: float = 1.0,
    knn: str = "exact",
    backend: str = "auto",
    variant: str = "sicl",
    support: str = "auto",
    stats: dict | None = None,
    nprobe: int = 8,
    nlist: int | None = None,
) -> PseudoLabels:
    """Pseudo-labels of L2-normalised features ``feats`` [N, D] (numpy or torch, any device).

    ``support`` chooses which Jaccard distances are stored. ``full``: every pair sharing
    support (d < 1), whose number per row grows with N (hub samples join far neighbourhoods).
    ``bounded``: only what the two consumers read, so memory follows the clusters, not N —
    the pairs with ``d ≤ eps`` (DBSCAN tests nothing else) and, in a second pass of the overlap
    step over the same weights, the pairs inside one DBSCAN cluster at eps or at the tight eps
    (the refinement sums nothing else). The labels are identical; the second pass costs one
    more overlap step. ``auto``: ``bounded`` from ``BOUNDED_SUPPORT_MIN_N`` samples on.
    ``nprobe`` / ``nlist`` tune ``knn="approx"`` (see :func:`maskcl.cluster.knn.knn`).
    ``stats``, if given, receives the overlap passes' pair counts (see
    :func:`maskcl.cluster.jaccard.jaccard_pairs`) as ``pairs`` and ``refine_pairs``.

    Raises:
        ClusteringError: ``eps`` outside (0, 1) / tight eps ≤ 0, or DBSCAN found no cluster.
    """
    if not 0 < eps < 1:
        raise ClusteringError(
            f"eps is {eps}; expected 0 < eps < 1 (Jaccard distances lie in [0, 1], eps ≥ 1 joins everything)"
        )
    eps_tight = eps - eps_gap
    if refine and eps_tight <= 0:
        raise ClusteringError(f"eps_gap is {eps_gap}; expected 0 <= eps_gap < eps ({eps}) for the tight DBSCAN")
    if support not in SUPPORTS:
        raise ClusteringError(f"cluster support is {support!r}; expected one of {', '.join(SUPPORTS)}")
    n = int(feats.shape[0])
    bounded = support == "bounded" or (support == "auto" and n >= BOUNDED_SUPPORT_MIN_N)
    timings: dict[str, float] = {}
    pair_stats: dict = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    width = search_width(k1, variant)
    sims, idx = knn_search(feats, min(width, n), backend=backend, mode=knn, nprobe=nprobe, nlist=nlist)
    if idx.shape[1] < width:  # fewer samples than k1: pad with self (no effect on reciprocity)
        pad = width - idx.shape[1]
        idx = np.concatenate([idx, np.repeat(idx[:, :1], pad, axis=1)], axis=1)
        sims = np.concatenate([sims, np.repeat(sims[:, :1], pad, axis=1)], axis=1)
    timings["knn_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # upper triangle only: DBSCAN and refinement mirror the few pairs they use
    V = jaccard_weights(feats, sims, idx, k1, k2, variant=variant, timings=timings)
    del sims, idx
    dist = jaccard_pairs(V, True, max_distance=eps if bounded else None, timings=timings, stats=pair_stats)
    if not (bounded and refine):
        del V
    timings["jaccard_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    raw = dbscan_sparse(dist, eps, min_samples, upper=True)
    if not (raw >= 0).any():
        raise ClusteringError(
            f"DBSCAN (eps={eps}, min_samples={min_samples}) found no cluster among {n} samples: every "
            f"sample is noise. Expected at least one cluster; try a larger eps (e.g. eps={min(eps + 0.1, 0.95):.2f}) "
            f"or a smaller min_samples, or check that the features are L2-normalised and not degenerate."
        )
    raw_tight = dbscan_sparse(dist, eps_tight, min_samples, upper=True) if refine else raw
    timings["dbscan_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    groups = singleton_labels(raw)
    n_refined_out = 0
    refine_stats: dict = {}
    if refine:
        groups_tight = singleton_labels(raw_tight)
        if bounded:  # the same-cluster pairs, whatever their distance
            del dist
            dist = jaccard_pairs(V, True, groups=(groups, groups_tight), timings=timings,
                                 key="jaccard_refine_pairs_s", stats=refine_stats)
            del V
        keep = refine_keep(dist, groups, groups_tight, ratio_cluster, upper=True)
        in_cluster = raw >= 0
        out = ~keep & in_cluster
        n_refined_out = int(out.sum())
        groups = groups.copy()
        groups[~keep] = groups.max() + 1 + np.arange(int((~keep).sum()))
    labels, n_clusters, n_single = relabel_clusters_first(groups)
    timings["refine_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    if stats is not None:
        stats.update(support="bounded" if bounded else "full", pairs=pair_stats, refine_pairs=refine_stats)
    n_noise = int((raw < 0).sum())
    logger.info(
        "pseudo-labels: %d clusters, %d un-clustered (%d DBSCAN noise, %d refined out) of %d samples in %.1fs",
        n_clusters, n_single, n_noise, n_refined_out, n, timings["total_s"],
    )
    return PseudoLabels(
        labels=labels,
        n_clusters=n_clusters,
        n_unclustered=n_single,
        n_refined_out=n_refined_out,
        n_noise=n_noise,
        labels_dbscan=raw,
        labels_tight=raw_tight,
        timings=timings,
    )
