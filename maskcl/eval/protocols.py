"""Evaluation protocols: which queries and gallery items enter, and which matching rule applies.

Each protocol is registered under the name the contract fixes and documents which paper or code
uses it (datasets.md §2). A protocol selects query/gallery index subsets and a rule of
:mod:`maskcl.eval.metrics` (``standard``: exclude same pid & same camera; ``cc``: also exclude
same pid & same clothes; ``sc``: keep only same-clothes matches); single-shot PRCC averages
seeded random galleries. Results are percentages with ``n_queries``/``n_skipped``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from maskcl.data.records import DatasetSplits
from maskcl.errors import ConfigError
from maskcl.eval.metrics import RANKS, Labels, normalise, rule_metrics_from_features
from maskcl.eval.summary import format_line
from maskcl.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalInputs:
    """Normalised features and labels of one evaluation, shared by the protocols."""

    query_feats: torch.Tensor  # [Nq, D], L2-normalised
    gallery_feats: torch.Tensor  # [Ng, D], L2-normalised
    query: Labels
    gallery: Labels
    splits: DatasetSplits
    seed: int
    trials: int

    def score(self, rule: str, q_index: np.ndarray | None = None, g_index: np.ndarray | None = None) -> dict[str, float]:
        qf, q = self.query_feats, self.query
        gf, g = self.gallery_feats, self.gallery
        if q_index is not None:
            qf, q = qf[torch.from_numpy(q_index).to(qf.device)], q.subset(q_index)
        if g_index is not None:
            gf, g = gf[torch.from_numpy(g_index).to(gf.device)], g.subset(g_index)
        if len(q) == 0 or len(g) == 0:
            logger.warning("protocol selects %d queries and %d gallery items; metrics are NaN", len(q), len(g))
            return _empty(len(q))
        return rule_metrics_from_features(qf, gf, q, g, rule, normalised=True)


@dataclass(frozen=True)
class Protocol:
    name: str
    rule: str
    source: str  # which paper/code uses it
    run: Callable[[EvalInputs], dict[str, float]]


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def _register(name: str, rule: str, source: str) -> Callable[[Callable[[EvalInputs], dict[str, float]]], Protocol]:
    def wrap(fn: Callable[[EvalInputs], dict[str, float]]) -> Protocol:
        protocol = Protocol(name, rule, source, fn)
        PROTOCOLS.register(name)(protocol)
        return protocol

    return wrap


@_register("standard", "standard", "CAL tools/eval_metrics.evaluate; Market-1501, DeepChange, Celeb-reID")
def _standard(x: EvalInputs) -> dict[str, float]:
    """All queries vs all gallery items; good = same pid & other camera ('general' setting)."""
    return x.score("standard")


@_register("cc", "cc", "CAL evaluate_with_clothes(mode='CC'); MaskCL ranking.py (every dataset)")
def _cc(x: EvalInputs) -> dict[str, float]:
    """All queries/gallery; good = same pid, other camera, other clothes. LTCC: all 75 ids (CAL)."""
    return x.score("cc")


@_register("sc", "sc", "CAL evaluate_with_clothes(mode='SC')")
def _sc(x: EvalInputs) -> dict[str, float]:
    """All queries/gallery; good = same pid, other camera, same clothes."""
    return x.score("sc")


@_register("ltcc_cc_maskcl", "cc", "MaskCL code maskcl/datasets/LTCC.py + ranking.py")
def _ltcc_cc_maskcl(x: EvalInputs) -> dict[str, float]:
    """Query and gallery cut to the 45 ids of info/cloth-change_id_test.txt, CC rule.

    The cloth-consistent ids' 1,031 gallery images are removed, not kept as distractors, so the
    numbers are not comparable with CAL's LTCC ``cc``.
    """
    ids = x.splits.meta.get("cc_test_ids")
    if ids is None:
        raise ConfigError(
            f"protocol 'ltcc_cc_maskcl' needs meta['cc_test_ids'] (LTCC info/cloth-change_id_test.txt); "
            f"dataset '{x.splits.name}' has none"
        )
    ids = np.asarray(sorted(ids), dtype=np.int64)
    return x.score("cc", np.flatnonzero(np.isin(x.query.pids, ids)), np.flatnonzero(np.isin(x.gallery.pids, ids)))


PRCC_A, PRCC_B, PRCC_C = 0, 1, 2


@_register("prcc_cc", "standard", "CAL (multi-shot; Simple-CCReID issue #7)")
def _prcc_cc(x: EvalInputs) -> dict[str, float]:
    """PRCC changed clothes, multi-shot: queries of test/C (camera 2) vs all of test/A."""
    return x.score("standard", np.flatnonzero(x.query.camids == PRCC_C), np.flatnonzero(x.gallery.camids == PRCC_A))


@_register("prcc_sc", "standard", "CAL (multi-shot)")
def _prcc_sc(x: EvalInputs) -> dict[str, float]:
    """PRCC same clothes, multi-shot: queries of test/B (camera 1) vs all of test/A."""
    return x.score("standard", np.flatnonzero(x.query.camids == PRCC_B), np.flatnonzero(x.gallery.camids == PRCC_A))


@_register("prcc_cc_single_shot", "standard", "MaskCL code CMC.py; PRCC paper (Yang et al., TPAMI) §5.1")
def _prcc_cc_single_shot(x: EvalInputs) -> dict[str, float]:
    """test/C vs one random test/A image per pid, mean over ``trials`` seeded draws.

    Reproducible across machines (MaskCL's draws depend on ``os.listdir`` order): the gallery is
    in sorted-path order and draw ``t`` picks, for every pid in ascending order, one of its
    images with ``numpy.random.default_rng(seed)`` (one generator for all trials). With one
    true match per query, AP = 1/rank, so mAP exceeds rank-1.
    """
    q_index = np.flatnonzero(x.query.camids == PRCC_C)
    a_index = np.flatnonzero(x.gallery.camids == PRCC_A)
    pids = x.gallery.pids[a_index]
    groups = [a_index[pids == pid] for pid in np.unique(pids)]
    rng = np.random.default_rng(x.seed)
    runs = []
    for _ in range(max(1, x.trials)):
        gallery = np.sort(np.array([group[rng.integers(len(group))] for group in groups], dtype=np.int64))
        runs.append(x.score("standard", q_index, gallery))
    return _mean(runs)


VC_CC_CAMIDS = (2, 3)  # raw cameras 3 & 4 (camid = raw − 1)
VC_SC_CAMIDS = (1, 2)  # raw cameras 2 & 3


@_register("vcclothes_cc", "standard", "CAL vcclothes_cc mode; most papers' 'VC-Clothes CC'")
def _vcclothes_cc(x: EvalInputs) -> dict[str, float]:
    """Query and gallery restricted to raw cameras 3 & 4 (clothes change between them)."""
    return x.score("standard", *_cameras(x, VC_CC_CAMIDS))


@_register("vcclothes_sc", "standard", "CAL vcclothes_sc mode")
def _vcclothes_sc(x: EvalInputs) -> dict[str, float]:
    """Query and gallery restricted to raw cameras 2 & 3 (same clothes)."""
    return x.score("standard", *_cameras(x, VC_SC_CAMIDS))


def _cameras(x: EvalInputs, camids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.flatnonzero(np.isin(x.query.camids, camids)), np.flatnonzero(np.isin(x.gallery.camids, camids))


def _empty(n_skipped: int) -> dict[str, float]:
    out: dict[str, float] = {"mAP": float("nan")}
    out.update({f"rank{k}": float("nan") for k in RANKS})
    out.update(n_queries=0, n_skipped=int(n_skipped))
    return out


def _mean(runs: list[dict[str, float]]) -> dict[str, float]:
    out = {key: float(np.mean([r[key] for r in runs])) for key in runs[0] if key not in ("n_queries", "n_skipped")}
    out["n_queries"] = int(max(r["n_queries"] for r in runs))
    out["n_skipped"] = int(max(r["n_skipped"] for r in runs))
    return out


def evaluate_features(
    query_feats: torch.Tensor | np.ndarray,
    gallery_feats: torch.Tensor | np.ndarray,
    splits: DatasetSplits,
    protocols: Sequence[str] | None = None,
    seed: int = 0,
    trials: int = 10,
) -> dict[str, dict[str, float]]:
    """Score features ``[Nq, D]`` / ``[Ng, D]`` (rows in ``splits.query``/``splits.gallery`` order).

    ``protocols`` defaults to ``splits.protocols``. Features are L2-normalised here (idempotent)
    and ranked by squared Euclidean distance ``2 − 2·cos``. Returns ``{protocol: {mAP, rank1,
    rank5, rank10, rank20, n_queries, n_skipped}}`` in percentages.
    """
    qf = normalise(query_feats if isinstance(query_feats, torch.Tensor) else torch.from_numpy(np.asarray(query_feats)))
    gf = normalise(gallery_feats if isinstance(gallery_feats, torch.Tensor) else torch.from_numpy(np.asarray(gallery_feats)))
    if qf.shape[0] != len(splits.query) or gf.shape[0] != len(splits.gallery):
        raise ValueError(
            f"got {qf.shape[0]} query / {gf.shape[0]} gallery features for dataset '{splits.name}' with "
            f"{len(splits.query)} query / {len(splits.gallery)} gallery images"
        )
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query features have dimension {qf.shape[1]}, gallery features {gf.shape[1]}")
    inputs = EvalInputs(
        qf, gf.to(qf.device), Labels.from_records(splits.query), Labels.from_records(splits.gallery), splits, seed, trials
    )
    names = list(protocols) if protocols is not None else list(splits.protocols)
    results = {}
    for name in names:
        results[name] = PROTOCOLS.get(name).run(inputs)
        logger.info("%s %s: %s", splits.name, name, format_line(results[name]))
    return results
