"""Protocols: which queries/gallery items enter, and evaluate_features end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maskcl.data.records import DatasetSplits, Record
from maskcl.errors import ConfigError
from maskcl.eval import PROTOCOLS, Labels, evaluate_features, rule_metrics_from_features

KEYS = {"mAP", "rank1", "rank5", "rank10", "rank20", "n_queries", "n_skipped"}


def records(rows: list[tuple[int, int, int]], prefix: str) -> list[Record]:
    return [Record(Path(f"{prefix}/{i:04d}.png"), pid, clo, cam) for i, (pid, cam, clo) in enumerate(rows)]


def features(recs: list[Record], noise: float, seed: int) -> torch.Tensor:
    """Identity direction + noise: a weak but non-trivial model."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(64, 16, generator=torch.Generator().manual_seed(99))
    pids = torch.tensor([r.pid for r in recs])
    return base[pids] + noise * torch.randn(len(recs), 16, generator=gen)


def ltcc_like() -> DatasetSplits:
    rng = np.random.default_rng(0)
    q = [(int(p), int(rng.integers(0, 4)), int(p * 2 + rng.integers(0, 2))) for p in rng.integers(0, 8, 40)]
    g = [(p, cam, p * 2 + o) for p in range(8) for cam in range(4) for o in range(2)]
    meta = {"cc_test_ids": [1, 2, 3, 5]}
    return DatasetSplits("t", Path("."), [], records(q, "q"), records(g, "g"), ("ltcc_cc_maskcl", "cc", "standard", "sc"), meta)


def manual(splits: DatasetSplits, qf, gf, rule, q_mask, g_mask):
    q, g = Labels.from_records(splits.query), Labels.from_records(splits.gallery)
    qi, gi = np.flatnonzero(q_mask(q)), np.flatnonzero(g_mask(g))
    return rule_metrics_from_features(qf[qi], gf[gi], q.subset(qi), g.subset(gi), rule)


def test_registry_names() -> None:
    assert set(PROTOCOLS.names()) == {
        "standard", "cc", "sc", "ltcc_cc_maskcl", "prcc_cc", "prcc_sc", "prcc_cc_single_shot", "vcclothes_cc", "vcclothes_sc",
    }
    assert all(PROTOCOLS.get(n).source for n in PROTOCOLS.names())


def test_defaults_and_keys() -> None:
    splits = ltcc_like()
    out = evaluate_features(features(splits.query, 1.0, 1), features(splits.gallery, 1.0, 2), splits)
    assert list(out) == list(splits.protocols)
    for metrics in out.values():
        assert set(metrics) == KEYS
        assert 0 <= metrics["mAP"] <= 100 and isinstance(metrics["n_queries"], int)


def test_ltcc_cc_maskcl_cuts_to_cloth_change_ids() -> None:
    splits = ltcc_like()
    qf, gf = features(splits.query, 1.0, 1), features(splits.gallery, 1.0, 2)
    ids = [1, 2, 3, 5]
    expected = manual(splits, qf, gf, "cc", lambda q: np.isin(q.pids, ids), lambda g: np.isin(g.pids, ids))
    out = evaluate_features(qf, gf, splits, ["ltcc_cc_maskcl", "cc"])
    assert out["ltcc_cc_maskcl"] == pytest.approx(expected)
    assert out["ltcc_cc_maskcl"]["n_queries"] == sum(r.pid in ids for r in splits.query)
    assert out["cc"]["n_queries"] == len(splits.query)  # every query has another-clothes match
    no_meta = DatasetSplits("t", Path("."), [], splits.query, splits.gallery, ("cc",), {})
    with pytest.raises(ConfigError, match="cc_test_ids"):
        evaluate_features(qf, gf, no_meta, ["ltcc_cc_maskcl"])


def prcc_like(shots: int = 3) -> DatasetSplits:
    q = [(p, cam, p * 2 + (cam == 2)) for p in range(6) for cam in (1, 2) for _ in range(3)]
    g = [(p, 0, p * 2) for p in range(6) for _ in range(shots)]
    return DatasetSplits("prcc", Path("."), [], records(q, "q"), records(g, "g"), ("prcc_cc_single_shot", "prcc_cc", "prcc_sc"), {})


def test_prcc_multi_shot_filters_cameras() -> None:
    splits = prcc_like()
    qf, gf = features(splits.query, 1.5, 3), features(splits.gallery, 1.5, 4)
    out = evaluate_features(qf, gf, splits, ["prcc_cc", "prcc_sc"])
    assert out["prcc_cc"] == pytest.approx(manual(splits, qf, gf, "standard", lambda q: q.camids == 2, lambda g: g.camids == 0))
    assert out["prcc_sc"] == pytest.approx(manual(splits, qf, gf, "standard", lambda q: q.camids == 1, lambda g: g.camids == 0))
    assert out["prcc_cc"]["n_queries"] == 18


def test_prcc_single_shot_is_seeded_mean_of_draws() -> None:
    splits = prcc_like()
    qf, gf = features(splits.query, 1.5, 3), features(splits.gallery, 1.5, 4)
    a = evaluate_features(qf, gf, splits, ["prcc_cc_single_shot"], seed=5, trials=4)["prcc_cc_single_shot"]
    b = evaluate_features(qf, gf, splits, ["prcc_cc_single_shot"], seed=5, trials=4)["prcc_cc_single_shot"]
    assert a == b and a["n_queries"] == 18
    # mean of the per-draw results, each draw = one gallery image per pid, same generator
    rng = np.random.default_rng(5)
    q, g = Labels.from_records(splits.query), Labels.from_records(splits.gallery)
    qi = np.flatnonzero(q.camids == 2)
    runs = []
    for _ in range(4):
        gi = np.sort([np.flatnonzero(g.pids == p)[rng.integers(3)] for p in range(6)])
        runs.append(rule_metrics_from_features(qf[qi], gf[gi], q.subset(qi), g.subset(gi), "standard"))
    assert a["mAP"] == pytest.approx(np.mean([r["mAP"] for r in runs]))
    assert a["rank1"] == pytest.approx(np.mean([r["rank1"] for r in runs]))
    # with one A image per pid every draw is the same gallery: equals multi-shot
    single = prcc_like(shots=1)
    qf1, gf1 = features(single.query, 1.5, 3), features(single.gallery, 1.5, 4)
    out = evaluate_features(qf1, gf1, single, ["prcc_cc_single_shot", "prcc_cc"], trials=3)
    assert out["prcc_cc_single_shot"] == pytest.approx(out["prcc_cc"])
    assert out["prcc_cc"]["mAP"] >= out["prcc_cc"]["rank1"]  # one match per query: AP = 1/rank


def test_vcclothes_camera_subsets() -> None:
    q = [(p, cam, p * 4 + (cam >= 2)) for p in range(5) for cam in range(4)]
    g = [(p, cam, p * 4 + (cam >= 2)) for p in range(5) for cam in range(4) for _ in range(2)]
    splits = DatasetSplits("vc", Path("."), [], records(q, "q"), records(g, "g"), ("cc",), {})
    qf, gf = features(splits.query, 1.0, 5), features(splits.gallery, 1.0, 6)
    out = evaluate_features(qf, gf, splits, ["vcclothes_cc", "vcclothes_sc"])
    cc_cams, sc_cams = [2, 3], [1, 2]
    assert out["vcclothes_cc"] == pytest.approx(
        manual(splits, qf, gf, "standard", lambda x: np.isin(x.camids, cc_cams), lambda x: np.isin(x.camids, cc_cams))
    )
    assert out["vcclothes_sc"] == pytest.approx(
        manual(splits, qf, gf, "standard", lambda x: np.isin(x.camids, sc_cams), lambda x: np.isin(x.camids, sc_cams))
    )
    assert out["vcclothes_cc"]["n_queries"] == 10


def test_celeb_convention_makes_cc_equal_standard() -> None:
    q = [(p, 0, 0) for p in range(5) for _ in range(2)]
    g = [(p, 1, 1) for p in range(5) for _ in range(3)]
    splits = DatasetSplits("celeb", Path("."), [], records(q, "q"), records(g, "g"), ("standard", "cc"), {})
    out = evaluate_features(features(splits.query, 2.0, 7), features(splits.gallery, 2.0, 8), splits)
    assert out["standard"] == out["cc"]


def test_perfect_features_score_100_and_errors() -> None:
    splits = prcc_like()
    out = evaluate_features(features(splits.query, 0.0, 0).numpy(), features(splits.gallery, 0.0, 0).numpy(), splits, ["prcc_cc"])
    assert out["prcc_cc"]["mAP"] == 100.0 and out["prcc_cc"]["rank1"] == 100.0
    with pytest.raises(ValueError, match="query / .* gallery features"):
        evaluate_features(torch.zeros(3, 16), torch.zeros(18, 16), splits)
    with pytest.raises(ConfigError, match="unknown protocol"):
        evaluate_features(features(splits.query, 1, 0), features(splits.gallery, 1, 0), splits, ["nope"])


def test_protocol_without_any_valid_query_gives_nan() -> None:
    splits = prcc_like()
    splits = DatasetSplits("x", Path("."), [], splits.query, splits.gallery, ("sc",), {})
    out = evaluate_features(features(splits.query, 1, 0), features(splits.gallery, 1, 1), splits, ["vcclothes_cc"])
    assert out["vcclothes_cc"]["n_queries"] == 0 and math.isnan(out["vcclothes_cc"]["mAP"])
