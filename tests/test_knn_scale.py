"""Exact kNN in O(N·k) memory: the running top-k search equals the previous (per-tile list)
search and a brute-force reference, ties included, and its candidate state grows linearly in N."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from maskcl.cluster.knn import _torch_self_search, knn


@pytest.fixture(autouse=True)
def one_thread():
    """The tiles here are tiny: a 2-thread BLAS call on a loaded machine costs ~20 ms of
    hand-offs per 23×23 product (100× its work), so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- references
def previous_self_search(x: np.ndarray, k: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """The search as it was before the running top-k: one [tile, k] list per column tile for
    every row block, one final top-k (memory O(N²/tile·k)). Kept verbatim as the reference."""
    x = torch.as_tensor(x)
    n = x.shape[0]
    starts = list(range(0, n, tile))
    cand_v: list[list[torch.Tensor]] = [[] for _ in starts]
    cand_i: list[list[torch.Tensor]] = [[] for _ in starts]
    for bi, a in enumerate(starts):
        xa = x[a : a + tile]
        for bj in range(bi, len(starts)):
            b = starts[bj]
            s = xa @ x[b : b + tile].T
            v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
            cand_v[bi].append(v)
            cand_i[bi].append(i + b)
            if bj != bi:
                v, i = torch.topk(s, min(k, s.shape[0]), dim=0)
                cand_v[bj].append(v.T)
                cand_i[bj].append(i.T + a)
    sims, idx = [], []
    for bi in range(len(starts)):
        v, pos = torch.topk(torch.cat(cand_v[bi], 1), k, dim=1)
        sims.append(v)
        idx.append(torch.gather(torch.cat(cand_i[bi], 1), 1, pos))
    return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the full similarity matrix by (similarity desc, index asc); for data whose dot
    products are exact in float32, so no rounding can reorder them."""
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    cols = np.broadcast_to(np.arange(x.shape[0]), s.shape)
    order = np.lexsort((cols, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1).astype(np.float32), order


def sign_vectors(n: int, d: int, seed: int) -> np.ndarray:
    """[n, d] unit vectors with entries ±1/√d (d a power of 4): every dot product is a multiple
    of 1/d, exact in float32, and with 2^d patterns for n ≫ √(2^d) samples there are many ties
    and duplicates."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-1.0, 1.0], size=(n, d)) / np.sqrt(d)).astype(np.float32)


def blobs(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 15), d))
    x = centres[rng.integers(0, centres.shape[0], n)] + rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def assert_equal_up_to_ties(sims_a, idx_a, sims_b, idx_b) -> None:
    """Same similarities, bit for bit; same neighbours except among exactly tied ones."""
    np.testing.assert_array_equal(np.sort(sims_a, 1), np.sort(sims_b, 1))
    for r in range(sims_a.shape[0]):
        for value in np.unique(sims_a[r]):
            assert set(idx_a[r][sims_a[r] == value]) == set(idx_b[r][sims_b[r] == value]) or value == sims_a[r].min()


# ---------------------------------------------------------------- equality
def test_running_topk_equals_previous_search_on_random_data():
    x = blobs(900, 48, seed=1)
    s_new, i_new = _torch_self_search(x, 17, tile=64)
    s_old, i_old = previous_self_search(x, 17, tile=64)
    np.testing.assert_array_equal(s_new, s_old)  # same tiles, same fp32 products
    np.testing.assert_array_equal(i_new, i_old)


@pytest.mark.parametrize("tile", [23, 64, 500])
def test_running_topk_resolves_ties_by_index_like_brute_force(tile):
    x = sign_vectors(600, 16, seed=2)
    s, i = _torch_self_search(x, 12, tile=tile)
    s_ref, i_ref = brute_force(x, 12)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(i, i_ref)


def test_running_topk_equals_previous_search_with_ties():
    x = sign_vectors(600, 16, seed=3)
    s_new, i_new = _torch_self_search(x, 12, tile=50)
    s_old, i_old = previous_self_search(x, 12, tile=50)
    assert (np.diff(s_new, axis=1) == 0).any(), "the data must contain ties"
    assert_equal_up_to_ties(s_new, i_new, s_old, i_old)
    # the old search kept an arbitrary member of a tie that straddles the k-th rank: the
    # new one keeps the smallest indices; both keep a tie's members only
    last = s_new[:, -1:]
    for r in range(x.shape[0]):
        tied = set(np.flatnonzero(np.isclose(x @ x[r], last[r, 0], atol=0)))
        assert set(i_new[r][s_new[r] == last[r, 0]]) <= tied
        assert set(i_old[r][s_old[r] == last[r, 0]]) <= tied


def test_knn_puts_self_first_among_duplicates():
    x = sign_vectors(300, 16, seed=4)
    x[5] = x[7] = x[9] = x[3]
    sims, idx = knn(x, 8, backend="torch")
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))
    for r in (3, 5, 7, 9):
        assert set(idx[r, :4]) == {3, 5, 7, 9}
        np.testing.assert_array_equal(sims[r, :4], 1.0)


# ---------------------------------------------------------------- memory
def test_candidate_state_is_linear_in_n():
    k, tile = 20, 256
    peaks = {}
    for n in (2000, 6000):
        stats: dict[str, int] = {}
        _torch_self_search(blobs(n, 16, seed=5), k, tile=tile, stats=stats)
        peaks[n] = stats["peak_state_bytes"] - stats["tile_bytes"]
        # per row: its top-k and at most merge_every (4) pending tile lists of k, 12 bytes per
        # entry — never one list per column tile (12·N·k·N/tile bytes: 34 MB at N = 6000)
        assert peaks[n] <= 12 * k * n * (1 + 4), (n, peaks[n])


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_process_memory_stays_near_the_result_size():
    n, k, tile = 8000, 30, 256
    x = blobs(n, 16, seed=6)
    _torch_self_search(x[:500], k, tile=tile)  # warm-up: torch's one-off allocations
    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak RSS here")
    before = _vm("VmRSS")
    _torch_self_search(x, k, tile=tile)
    grown = _vm("VmHWM") - before
    # result 12·N·k = 2.9 MB (growth measured alone: 16 MB); the previous search held
    # 12·N·k·N/tile = 92 MB of lists
    assert grown < 40 * 2**20, f"peak RSS grew {grown / 2**20:.0f} MB"


# ---------------------------------------------------------------- Jaccard support at scale
def _weights_of(x: np.ndarray, k1: int = 20, k2: int = 6):
    from maskcl.cluster.jaccard import jaccard_weights

    sims, idx = knn(x, k1, backend="torch")
    return jaccard_weights(x, sims, idx, k1, k2)


def test_overlap_by_sort_equals_overlap_by_bins():
    from maskcl.cluster.jaccard import _jaccard_upper

    V = _weights_of(blobs(1500, 32, seed=7))
    bins = _jaccard_upper(V, method="bins")
    # tiny blocks: many rows per key range and many blocks
    srt = _jaccard_upper(V, method="sort", block_instances=5000)
    np.testing.assert_array_equal(bins.indptr, srt.indptr)
    np.testing.assert_array_equal(bins.indices, srt.indices)
    np.testing.assert_allclose(bins.data, srt.data, atol=1e-6)


@pytest.mark.parametrize("method", ["bins", "sort"])
def test_overlap_filters_keep_exactly_the_requested_pairs(method):
    from maskcl.cluster.jaccard import _jaccard_upper

    V = _weights_of(blobs(800, 32, seed=8))
    full = _jaccard_upper(V, method=method).tocoo()
    near = _jaccard_upper(V, method=method, max_distance=0.5).tocoo()
    assert near.nnz < full.nnz
    expected = {(r, c) for r, c, d in zip(full.row, full.col, full.data) if d <= 0.5}
    assert set(zip(near.row, near.col)) == expected
    g1 = np.random.default_rng(0).integers(0, 40, 800)
    g2 = np.arange(800) // 10
    grouped = _jaccard_upper(V, method=method, groups=(g1, g2)).tocoo()
    expected = {(r, c) for r, c in zip(full.row, full.col) if g1[r] == g1[c] or g2[r] == g2[c]}
    assert set(zip(grouped.row, grouped.col)) == expected


def test_bounded_support_gives_the_same_pseudo_labels_with_fewer_pairs():
    from maskcl.cluster.pseudo_labels import generate_pseudo_labels

    rng = np.random.default_rng(9)
    x = blobs(1200, 32, seed=9)
    x[:40] = rng.standard_normal((40, 32)).astype(np.float32)  # outliers
    x[:40] /= np.linalg.norm(x[:40], axis=1, keepdims=True)
    s_full: dict = {}
    s_bounded: dict = {}
    full = generate_pseudo_labels(x, k1=20, k2=6, support="full", stats=s_full)
    bounded = generate_pseudo_labels(x, k1=20, k2=6, support="bounded", stats=s_bounded)
    assert full.n_refined_out > 0  # the refinement has work to do
    np.testing.assert_array_equal(full.labels, bounded.labels)
    np.testing.assert_array_equal(full.labels_tight, bounded.labels_tight)
    assert s_bounded["support"] == "bounded" and s_full["support"] == "full"
    assert s_bounded["pairs"]["support_pairs"] == s_full["pairs"]["stored_pairs"]
    assert s_bounded["pairs"]["stored_pairs"] + s_bounded["refine_pairs"]["stored_pairs"] < s_full["pairs"]["stored_pairs"]
