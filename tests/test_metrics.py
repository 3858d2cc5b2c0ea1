"""mAP/CMC: hand-computed cases, ties, skipped queries, and agreement with a plain loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskcl.eval.metrics import Labels, rank_metrics, rule_masks, rule_metrics, rule_metrics_from_features


def loop_reference(dist: np.ndarray, keep: np.ndarray, good: np.ndarray, ranks=(1, 5, 10, 20)) -> dict[str, float]:
    """Plain per-query implementation of datasets.md §2 (stable sort: ties by gallery index)."""
    aps, firsts, skipped = [], [], 0
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        kept = keep[i][order]
        matches = (good[i] & keep[i])[order][kept]
        if not matches.any():
            skipped += 1
            continue
        hits, precisions = 0, []
        for position, is_match in enumerate(matches):
            if is_match:
                hits += 1
                precisions.append(hits / (position + 1))
        aps.append(sum(precisions) / len(precisions))
        firsts.append(int(np.flatnonzero(matches)[0]))
    out: dict[str, float] = {}
    if aps:
        out["mAP"] = 100.0 * float(np.mean(aps))
        out.update({f"rank{k}": 100.0 * float(np.mean(np.asarray(firsts) < k)) for k in ranks})
    else:
        out["mAP"] = math.nan
        out.update({f"rank{k}": math.nan for k in ranks})
    out.update(n_queries=len(aps), n_skipped=skipped)
    return out


def assert_same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float) and math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert a[key] == pytest.approx(b[key], abs=1e-9), (key, a, b)


def test_hand_computed_ap_and_cmc() -> None:
    dist = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    good = np.array([[False, True, False, True]])
    keep = np.ones_like(good)
    out = rank_metrics(dist, keep, good)
    assert out["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)  # 50
    assert (out["rank1"], out["rank5"]) == (0.0, 100.0)
    assert (out["n_queries"], out["n_skipped"]) == (1, 0)


def test_junk_is_removed_from_the_ranking() -> None:
    dist = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    good = np.array([[False, True, False, True]])
    keep = np.array([[False, True, True, True]])  # the closest item is junk
    out = rank_metrics(dist, keep, good)
    assert out["mAP"] == pytest.approx(100 * (1 / 1 + 2 / 3) / 2)
    assert out["rank1"] == 100.0


def test_ties_break_by_gallery_index() -> None:
    # a non-match at index 0 ties with the match at index 1: the lower index ranks first
    dist = np.array([[0.5, 0.5, 0.9]], dtype=np.float32)
    out = rank_metrics(dist, np.ones((1, 3), bool), np.array([[False, True, False]]))
    assert out["mAP"] == 50.0 and out["rank1"] == 0.0
    # the match first in index order wins the tie
    out = rank_metrics(dist, np.ones((1, 3), bool), np.array([[True, False, False]]))
    assert out["mAP"] == 100.0 and out["rank1"] == 100.0
    # a tied junk item before the match is dropped, not counted
    out = rank_metrics(dist, np.array([[False, True, True]]), np.array([[False, True, False]]))
    assert out["rank1"] == 100.0


def test_queries_without_match_are_skipped_and_counted() -> None:
    dist = np.array([[0.1, 0.2], [0.3, 0.1]], dtype=np.float32)
    good = np.array([[True, False], [False, False]])
    out = rank_metrics(dist, np.ones((2, 2), bool), good)
    assert (out["n_queries"], out["n_skipped"], out["mAP"]) == (1, 1, 100.0)
    none = rank_metrics(dist, np.ones((2, 2), bool), np.zeros((2, 2), bool))
    assert none["n_queries"] == 0 and none["n_skipped"] == 2 and math.isnan(none["mAP"])


def test_rule_masks_by_hand() -> None:
    q = Labels([1], [0], [5])
    g = Labels([1, 1, 1, 2], [0, 1, 1, 0], [5, 5, 6, 7])
    keep, good = rule_masks(q, g, "standard")
    assert good.tolist() == [[False, True, True, False]] and keep.tolist() == [[False, True, True, True]]
    keep, good = rule_masks(q, g, "cc")
    assert good.tolist() == [[False, False, True, False]] and keep.tolist() == [[False, False, True, True]]
    keep, good = rule_masks(q, g, "sc")
    assert good.tolist() == [[False, True, False, False]] and keep.tolist() == [[False, True, False, True]]


def random_case(rng: np.random.Generator, n_q: int, n_g: int, n_ids: int, levels: int | None):
    q = Labels(rng.integers(0, n_ids, n_q), rng.integers(0, 3, n_q), rng.integers(0, 3, n_q))
    g = Labels(rng.integers(0, n_ids, n_g), rng.integers(0, 3, n_g), rng.integers(0, 3, n_g))
    if levels is None:
        dist = rng.random((n_q, n_g)).astype(np.float32)
    else:  # few distinct values: many ties
        dist = rng.integers(0, levels, (n_q, n_g)).astype(np.float32)
    return dist, q, g


@pytest.mark.parametrize("levels", [None, 3, 20])
@pytest.mark.parametrize("rule", ["standard", "cc", "sc"])
def test_vectorised_equals_loop(rule: str, levels: int | None) -> None:
    rng = np.random.default_rng(7)
    for _ in range(4):
        dist, q, g = random_case(rng, 37, 61, 6, levels)
        keep, good = rule_masks(q, g, rule)
        expected = loop_reference(dist, keep, good)
        assert_same(rule_metrics(dist, q, g, rule), expected)
        assert_same(rule_metrics(dist, q, g, rule, chunk_size=5), expected)
        assert_same(rank_metrics(dist, keep, good, chunk_size=8), expected)


def test_general_masks_equal_loop() -> None:
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 6, (25, 40)).astype(np.float32)
    keep = rng.random((25, 40)) > 0.3
    good = rng.random((25, 40)) > 0.8
    assert_same(rank_metrics(dist, keep, good), loop_reference(dist, keep, good))


def test_from_features_matches_distance_matrix() -> None:
    rng = np.random.default_rng(1)
    qf, gf = torch.randn(30, 16), torch.randn(50, 16)
    q = Labels(rng.integers(0, 5, 30), rng.integers(0, 3, 30), rng.integers(0, 3, 30))
    g = Labels(rng.integers(0, 5, 50), rng.integers(0, 3, 50), rng.integers(0, 3, 50))
    qn, gn = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    dist = ((qn[:, None, :] - gn[None, :, :]) ** 2).sum(-1).double().numpy()  # squared Euclidean
    keep, good = rule_masks(q, g, "cc")
    expected = loop_reference(dist, keep, good)
    assert_same(rule_metrics_from_features(qf, gf, q, g, "cc", chunk_size=7), expected)
    assert_same(rule_metrics_from_features(qf.numpy(), gf.numpy(), q, g, "cc"), expected)


def test_bad_inputs() -> None:
    q, g = Labels([1], [0], [0]), Labels([1, 2], [1, 0], [0, 0])
    with pytest.raises(ValueError, match="does not match"):
        rule_metrics(np.zeros((2, 2), np.float32), q, g)
    with pytest.raises(ValueError, match="unknown matching rule"):
        rule_metrics(np.zeros((1, 2), np.float32), q, g, "xx")
    with pytest.raises(ValueError, match="NaN"):
        rule_metrics(np.array([[np.nan, 0.1]], np.float32), q, g)
    with pytest.raises(ValueError, match="features contain NaN"):
        rule_metrics_from_features(torch.tensor([[np.nan, 1.0]]), torch.ones(2, 2), q, g)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 30),
    st.integers(1, 5),
    st.integers(1, 6),
    st.sampled_from(["standard", "cc", "sc"]),
    st.integers(0, 2**31 - 1),
)
def test_metric_properties(n_q: int, n_g: int, n_ids: int, levels: int, rule: str, seed: int) -> None:
    dist, q, g = random_case(np.random.default_rng(seed), n_q, n_g, n_ids, levels)
    out = rule_metrics(dist, q, g, rule)
    keep, good = rule_masks(q, g, rule)
    assert_same(out, loop_reference(dist, keep, good))
    assert out["n_queries"] + out["n_skipped"] == n_q
    if out["n_queries"]:
        cmc = [out[f"rank{k}"] for k in (1, 5, 10, 20)]
        assert all(0.0 <= v <= 100.0 for v in cmc + [out["mAP"]])
        assert cmc == sorted(cmc)  # CMC is monotone


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_dtypes_and_signed_zero_ties_equal_loop(dtype) -> None:
    """float32 packs (distance, column) into int64 keys; other dtypes take a stable argsort.

    Values from a small signed set tie everywhere, and -0.0 must tie with +0.0 (a stable sort
    compares them equal) although their bit patterns differ.
    """
    rng = np.random.default_rng(11)
    levels = np.array([-2.5, -1.0, -0.0, 0.0, 1.0, 3.0])
    for rule in ("standard", "cc"):
        dist, q, g = random_case(rng, 40, 90, 5, None)
        picked = levels[rng.integers(0, len(levels), dist.shape)]
        dist = (np.round(picked) if np.dtype(dtype).kind == "i" else picked).astype(dtype)
        keep, good = rule_masks(q, g, rule)
        expected = loop_reference(dist, keep, good)
        assert_same(rule_metrics(dist, q, g, rule), expected)
        assert_same(rule_metrics(dist, q, g, rule, chunk_size=3), expected)
        assert_same(rank_metrics(dist, keep, good), expected)


@pytest.mark.parametrize("threads", [1, 3])
def test_many_exact_ties_in_row_blocks_equal_loop(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """Tiny row blocks (sequential and on a thread pool); every good item ties with items at both
    lower and higher gallery indices (few distinct float32 values), plus queries with no match."""
    import maskcl.eval.metrics as metrics

    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 4 * 400 * 7)  # 7 rows a block
    monkeypatch.setattr(metrics.torch, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(5)
    n_q, n_g = 130, 400
    q = Labels(rng.integers(0, 12, n_q), rng.integers(0, 4, n_q), rng.integers(0, 4, n_q))
    g = Labels(rng.integers(0, 10, n_g), rng.integers(0, 4, n_g), rng.integers(0, 4, n_g))  # pids 10, 11: no match
    dist = (rng.integers(0, 7, (n_q, n_g)) * np.float32(0.1) + np.float32(1.9)).astype(np.float32)
    for rule in ("standard", "cc", "sc"):
        keep, good = rule_masks(q, g, rule)
        expected = loop_reference(dist, keep, good)
        assert expected["n_skipped"] > 0
        assert_same(rule_metrics(dist, q, g, rule), expected)
        assert_same(rule_metrics(torch.from_numpy(dist), q, g, rule, chunk_size=50), expected)


def test_nan_in_a_query_without_match_is_rejected() -> None:
    q, g = Labels([1, 3], [0, 0], [0, 0]), Labels([1, 2], [1, 0], [0, 0])  # query 1 has no match
    with pytest.raises(ValueError, match="NaN"):
        rule_metrics(np.array([[0.2, 0.1], [np.nan, 0.1]], np.float32), q, g)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_thread_pool_is_not_reused_across_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranking pool persists between calls; a forked child (threads not inherited) builds its own."""
    import os

    import maskcl.eval.metrics as metrics

    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 4 * 300 * 5)
    monkeypatch.setattr(metrics.torch, "get_num_threads", lambda: 2)
    rng = np.random.default_rng(2)
    dist, q, g = random_case(rng, 40, 300, 5, None)
    expected = rule_metrics(dist, q, g, "standard")
    pid = os.fork()
    if pid == 0:  # child: must not hang on the parent's (thread-less) pool
        ok = rule_metrics(dist, q, g, "standard") == expected
        os._exit(0 if ok else 1)
    import signal
    import time

    deadline = time.monotonic() + 20.0
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("rule_metrics hung in a forked child")
    assert os.waitstatus_to_exitcode(done[1]) == 0
