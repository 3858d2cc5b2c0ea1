"""Pseudo-labelling: sparse Jaccard vs a dense textbook implementation, DBSCAN vs scikit-learn,
the refinement rule on a hand-computed case, kNN backends, neighbours, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from maskcl.cluster.dbscan import dbscan_sparse, singleton_labels
from maskcl.cluster.jaccard import jaccard_distance, search_width
from maskcl.cluster.knn import faiss_available, knn, recall_at_k
from maskcl.cluster.neighbours import cluster_neighbours, curriculum_k
from maskcl.cluster.pseudo_labels import generate_pseudo_labels, relabel_clusters_first
from maskcl.cluster.refine import refine_keep, refine_scores
from maskcl.errors import ClusteringError


# ---------------------------------------------------------------- independent references
def dense_jaccard(x: np.ndarray, k1: int, k2: int, width: int) -> np.ndarray:
    """Zhong et al. (CVPR 2017) re-ranking, Jaccard part (λ = 0), dense and loop-based.

    ``width`` = columns of the initial ranking kept (k1 + 1 in the paper's code; k1 in the
    MaskCL code, whose faiss search returns k1 neighbours).
    """
    x = x.astype(np.float64)
    n = x.shape[0]
    dist = 2.0 - 2.0 * x @ x.T
    rank = np.argsort(dist, axis=1, kind="stable")[:, :width]

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    V = np.zeros((n, n))
    half = int(np.around(k1 / 2))
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = r
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        V[i, expansion] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.zeros((n, n))
    for i in range(n):
        s_min = np.minimum(V[i][None, :], V).sum(axis=1)
        jac[i] = 1.0 - s_min / (2.0 - s_min)
    jac[jac < 0] = 0.0
    return jac


def blobs(n: int, d: int, ids: int, spread: float, seed: int = 0, outliers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lab = rng.integers(0, ids, n)
    x = centres[lab] + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    if outliers:
        x[:outliers] = rng.standard_normal((outliers, d))
        lab[:outliers] = -1 - np.arange(outliers)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), lab


def to_dense(m: sp.csr_matrix) -> np.ndarray:
    out = np.ones(m.shape)
    coo = m.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


# ---------------------------------------------------------------- Jaccard
@pytest.mark.parametrize(
    "n,k1,k2,spread",
    [(60, 5, 1, 0.9), (120, 20, 6, 0.8), (150, 10, 3, 1.2), (200, 30, 6, 1.0), (90, 7, 4, 1.5)],
)
@pytest.mark.parametrize("variant", ["sicl", "zhong"])
def test_sparse_jaccard_equals_dense_textbook(n, k1, k2, spread, variant):
    x, _ = blobs(n, 32, max(2, n // 10), spread, seed=n + k1)
    expected = dense_jaccard(x, k1, k2, search_width(k1, variant))
    got = jaccard_distance(x, k1, k2, variant=variant, backend="torch")
    np.testing.assert_allclose(to_dense(got), expected, atol=1e-6)
    assert (got.data < 1).all()  # only pairs with distance < 1 are stored
    assert got.nnz == int((expected < 1 - 1e-9).sum())


@pytest.mark.parametrize("block_bins", [1, 37, 1 << 19])
def test_overlap_step_equals_plain_min_sums(block_bins):
    """The pair-overlap step alone, on random sparse rows (ties and shared columns included),
    against ``Σ_l min(V[i,l], V[j,l])`` summed densely; blocks of one row up to one block."""
    from maskcl.cluster.jaccard import _jaccard_upper

    rng = np.random.default_rng(block_bins)
    n = 70
    dense = np.where(rng.random((n, n)) < 0.12, rng.random((n, n)), 0.0)
    dense[5] = 0.0  # empty rows, also at the end
    dense[-2:] = 0.0
    dense[7, :] = dense[8, :]  # identical rows: distance exactly 0
    dense[9, 3] = dense[10, 3] = 0.25  # a tie in one column
    dense /= np.maximum(dense.sum(1, keepdims=True), 1e-300)  # rows sum to one like V
    got = _jaccard_upper(sp.csr_matrix(dense), block_bins=block_bins)
    s = np.minimum(dense[:, None, :], dense[None, :, :]).sum(axis=2)
    expected = np.maximum(1.0 - s / (2.0 - s), 0.0)
    shared = (dense[:, None, :] > 0) & (dense[None, :, :] > 0)
    upper = np.triu(shared.any(axis=2))
    assert got.has_sorted_indices
    np.testing.assert_array_equal(to_dense(got) < 1, upper)
    np.testing.assert_allclose(to_dense(got)[upper], expected[upper], atol=1e-6)
    assert got.dtype == np.float32 and got[7, 8] == 0.0


def test_sparse_jaccard_is_symmetric_with_zero_diagonal():
    x, _ = blobs(100, 16, 8, 1.0, seed=3)
    d = jaccard_distance(x, 10, 3)
    assert abs(d - d.T).max() < 1e-12
    np.testing.assert_allclose(d.diagonal(), 0.0, atol=1e-9)


def test_upper_triangle_form_matches_full_matrix_downstream():
    from maskcl.cluster.jaccard import jaccard_from_knn

    x, _ = blobs(150, 32, 12, 1.4, seed=9, outliers=5)
    sims, idx = knn(x, 20, backend="torch")
    full = jaccard_from_knn(x, sims, idx, 20, 6)
    up = jaccard_from_knn(x, sims, idx, 20, 6, upper=True)
    assert abs(sp.triu(full) - up).max() == 0 and sp.tril(up, -1).nnz == 0
    for eps in (0.5, 0.6):
        np.testing.assert_array_equal(dbscan_sparse(up, eps, 4, upper=True), dbscan_sparse(full, eps, 4))
    labels = singleton_labels(dbscan_sparse(full, 0.6, 4))
    tight = singleton_labels(dbscan_sparse(full, 0.5, 4))
    np.testing.assert_allclose(refine_scores(up, labels, tight, upper=True), refine_scores(full, labels, tight))


# ---------------------------------------------------------------- DBSCAN
@pytest.mark.parametrize("eps,min_samples", [(0.6, 4), (0.5, 4), (0.7, 3), (0.3, 2), (0.62, 8)])
def test_dbscan_sparse_equals_sklearn_on_dense(eps, min_samples):
    x, _ = blobs(200, 32, 20, 1.4, seed=1, outliers=10)
    d = jaccard_distance(x, 20, 6)
    expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(to_dense(d))
    np.testing.assert_array_equal(dbscan_sparse(d, eps, min_samples), expected)


def test_dbscan_border_points_take_the_first_cluster_like_sklearn():
    # random sparse distances: many border points reachable from several clusters
    rng = np.random.default_rng(0)
    n = 300
    dense = np.ones((n, n))
    r, c = rng.integers(0, n, 2000), rng.integers(0, n, 2000)
    dense[r, c] = dense[c, r] = rng.uniform(0, 1, 2000)
    np.fill_diagonal(dense, 0)
    expected = DBSCAN(eps=0.5, min_samples=5, metric="precomputed").fit_predict(dense)
    got = dbscan_sparse(sp.csr_matrix(np.where(dense < 1, dense, 0)), 0.5, 5)
    assert (expected >= 0).sum() > 20
    np.testing.assert_array_equal(got, expected)


def test_singleton_labels_follow_the_clusters_in_sample_order():
    np.testing.assert_array_equal(singleton_labels(np.array([1, -1, 0, -1, 1])), [1, 2, 0, 3, 1])


# ---------------------------------------------------------------- refinement
def _hand_case() -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """9 samples: cluster {0,1,2,3} whose tight part is {0,1,2}; singleton 4; cluster
    {5,6,7,8} identical at both eps. Unlisted pairs have distance 1."""
    pairs = {(0, 1): 0.2, (0, 2): 0.3, (1, 2): 0.4, (0, 3): 0.5, (1, 3): 0.5, (3, 4): 0.9,
             (5, 6): 0.1, (5, 7): 0.1, (5, 8): 0.1, (6, 7): 0.1, (6, 8): 0.1, (7, 8): 0.1}
    n = 9
    r = [i for i, _ in pairs] + [j for _, j in pairs] + list(range(n))
    c = [j for _, j in pairs] + [i for i, _ in pairs] + list(range(n))
    v = list(pairs.values()) * 2 + [0.0] * n
    d = sp.csr_matrix((v, (r, c)), shape=(n, n))
    labels = np.array([0, 0, 0, 0, 2, 1, 1, 1, 1])  # 4 = noise → singleton label 2
    tight = np.array([0, 0, 0, 2, 3, 1, 1, 1, 1])  # 3 and 4 noise at the tight eps
    return d, labels, tight


def test_refinement_scores_by_hand():
    d, labels, tight = _hand_case()
    b_tight, a_cluster = refine_scores(d, labels, tight)
    # A(C0) = 2·(0.2+0.3+0.5+0.4+0.5+1.0)/4² ; A({4}) = 0 ; A(C1) = 12·0.1/16
    np.testing.assert_allclose(a_cluster, [5.8 / 16] * 4 + [0.0] + [1.2 / 16] * 4)
    # b0 = d03 = 0.5, b1 = d13 = 0.5, b2 = d23 = 1 → B(T0) = 2 ; b3 = (0.5+0.5+1)/3² ; others 0
    np.testing.assert_allclose(b_tight, [2.0, 2.0, 2.0, 2.0 / 9, 0, 0, 0, 0, 0])
    keep = refine_keep(d, labels, tight, ratio_cluster=1.0)
    np.testing.assert_array_equal(keep, [False, False, False, True, True, True, True, True, True])
    # a small ratio keeps everyone: 0.1·2 ≤ 0.3625
    assert refine_keep(d, labels, tight, ratio_cluster=0.1).all()


def _dense_refine_keep(d: np.ndarray, labels: np.ndarray, tight: np.ndarray, ratio: float) -> np.ndarray:
    """The authors' N×N formulation (label-equality matrices), written out plainly."""
    same = (labels[:, None] == labels[None, :]).astype(float)
    same_t = (tight[:, None] == tight[None, :]).astype(float)
    a_per = (d * same).sum(1) / same.sum(1) ** 2
    a = np.zeros(labels.max() + 1)
    np.add.at(a, labels, a_per)
    sym = (same == 1 - same_t).astype(float)
    cnt = 1 + sym.sum(1)
    cnt[cnt > 1] -= 1
    b_per = (sym * d).sum(1) / cnt**2
    b = np.zeros(tight.max() + 1)
    np.add.at(b, tight, b_per)
    return ratio * b[tight] <= a[labels]


def test_refinement_equals_dense_formulation_on_dbscan_output():
    x, _ = blobs(200, 32, 15, 1.5, seed=5, outliers=8)
    d = jaccard_distance(x, 20, 6)
    labels = singleton_labels(dbscan_sparse(d, 0.6, 4))
    tight = singleton_labels(dbscan_sparse(d, 0.5, 4))
    for ratio in (0.5, 1.0, 2.0):
        np.testing.assert_array_equal(
            refine_keep(d, labels, tight, ratio), _dense_refine_keep(to_dense(d), labels, tight, ratio)
        )


# ---------------------------------------------------------------- pseudo-labels
def test_relabel_puts_clusters_first_then_singletons_in_sample_order():
    labels, n_clusters, n_single = relabel_clusters_first(np.array([7, 3, 7, 9, 3, 5]))
    np.testing.assert_array_equal(labels, [1, 0, 1, 2, 0, 3])
    assert (n_clusters, n_single) == (2, 2)


def test_pseudo_labels_keep_outliers_as_singletons():
    x, truth = blobs(200, 32, 10, 0.8, seed=2, outliers=6)
    res = generate_pseudo_labels(x, eps=0.6, eps_gap=0.02, k1=20, k2=6, min_samples=4)
    labels = res.labels
    assert labels.dtype == np.int64 and labels.shape == (200,)
    assert set(np.unique(labels)) == set(range(res.n_clusters + res.n_unclustered))
    counts = np.bincount(labels)
    assert (counts[: res.n_clusters] >= 2).all() and (counts[res.n_clusters :] == 1).all()
    noise = res.labels_dbscan == -1
    assert res.n_noise == int(noise.sum()) >= 1  # some planted outliers stay noise
    assert (labels[noise] >= res.n_clusters).all()  # DBSCAN noise is kept, as singletons
    assert res.n_unclustered >= res.n_noise + res.n_refined_out
    for key in ("knn_s", "jaccard_s", "dbscan_s", "refine_s", "total_s"):
        assert res.timings[key] >= 0


def test_pseudo_labels_without_refinement_match_dbscan_partition():
    x, _ = blobs(150, 32, 10, 1.0, seed=4, outliers=3)
    res = generate_pseudo_labels(x, k1=20, k2=6, refine=False)
    assert res.n_refined_out == 0
    raw = res.labels_dbscan
    for a in range(0, 150, 7):  # same partition as DBSCAN with noise as singletons
        same_raw = (raw == raw[a]) & (raw >= 0)
        same_raw[a] = True
        np.testing.assert_array_equal(res.labels == res.labels[a], same_raw)


def test_no_cluster_raises_clustering_error_naming_eps():
    x, _ = blobs(80, 64, 80, 5.0, seed=0)  # no structure
    with pytest.raises(ClusteringError, match=r"eps=0\.05.*larger eps"):
        generate_pseudo_labels(x, eps=0.05, eps_gap=0.02, k1=10, k2=3, min_samples=10)


def test_eps_of_one_or_more_is_rejected():
    x, _ = blobs(40, 8, 4, 0.5)
    with pytest.raises(ClusteringError, match="eps is 1.0"):
        generate_pseudo_labels(x, eps=1.0, k1=5, k2=2)


# ---------------------------------------------------------------- kNN
def test_faiss_and_torch_knn_agree_and_put_self_first():
    if not faiss_available():
        pytest.skip("faiss not installed")
    x, _ = blobs(300, 64, 30, 1.0, seed=6)
    s_f, i_f = knn(x, 12, backend="faiss")
    s_t, i_t = knn(x, 12, backend="torch")
    np.testing.assert_array_equal(i_f[:, 0], np.arange(300))
    np.testing.assert_array_equal(i_f, i_t)
    np.testing.assert_allclose(s_f, s_t, atol=1e-5)
    np.testing.assert_allclose(s_t, np.sort(x @ x.T, axis=1)[:, ::-1][:, :12], atol=1e-5)


def test_torch_knn_symmetric_tiling_equals_brute_force():
    from maskcl.cluster.knn import _torch_self_search

    x, _ = blobs(333, 16, 20, 1.0, seed=7)
    s, i = _torch_self_search(x, 9, tile=50)
    order = np.argsort(-(x.astype(np.float64) @ x.T.astype(np.float64)), axis=1, kind="stable")[:, :9]
    np.testing.assert_array_equal(i, order)


def test_knn_self_first_with_duplicate_features():
    x, _ = blobs(50, 8, 5, 0.5)
    x[1] = x[0]
    x[2] = x[0]
    _, idx = knn(x, 5, backend="torch")
    np.testing.assert_array_equal(idx[:, 0], np.arange(50))
    assert {0, 1, 2} <= set(idx[1, :3])


def test_approx_knn_recall_on_clustered_features():
    x, _ = blobs(1000, 256, 50, 1.0, seed=8)
    _, exact = knn(x, 20, backend="torch")
    sims, approx = knn(x, 20, mode="approx")
    assert recall_at_k(approx, exact) > 0.95
    np.testing.assert_array_equal(approx[:, 0], np.arange(1000))
    # similarities are exact cosines, rows sorted by decreasing similarity
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", x, x[approx]), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()
    assert (approx != np.arange(1000)[:, None])[:, 1:].all()  # self only once


@pytest.mark.parametrize("nlist,nprobe", [(4, 4), (60, 1), (300, 2)])
def test_approx_knn_knobs(nlist, nprobe):
    x, _ = blobs(600, 64, 30, 0.8, seed=10)
    _, exact = knn(x, 12, backend="torch")
    sims, approx = knn(x, 12, mode="approx", nlist=nlist, nprobe=nprobe, kmeans_iters=3, seed=1)
    assert approx.shape == (600, 12) and np.isfinite(sims).all()
    np.testing.assert_array_equal(approx[:, 0], np.arange(600))
    # every row holds 12 distinct samples, even where the probed lists hold fewer than k
    srt = np.sort(approx, axis=1)
    assert (np.diff(srt, axis=1) > 0).all()
    if nprobe == nlist:  # every list probed: exact
        np.testing.assert_array_equal(approx, exact)
    else:
        assert recall_at_k(approx, exact) > 0.8


def test_cluster_nprobe_and_nlist_reach_the_approximate_search():
    """The config's IVF knobs steer training's pseudo-labels: probing every list is the exact search."""
    from maskcl.config import Config
    from maskcl.engine.trainer import make_pseudo_labels

    x, _ = blobs(400, 32, 20, 0.6, seed=3)
    feats = torch.from_numpy(x)
    base = {"eps": 0.6, "k1": 10, "k2": 3}
    exact = make_pseudo_labels(feats, Config.from_dict(base))
    every_list = Config.from_dict({**base, "cluster": {"knn": "approx", "nlist": 12, "nprobe": 12}})
    one_list = Config.from_dict({**base, "cluster": {"knn": "approx", "nlist": 40, "nprobe": 1}})
    np.testing.assert_array_equal(make_pseudo_labels(feats, every_list).labels, exact.labels)
    _, exact_idx = knn(x, 10)
    # one list of 40 misses neighbours on these overlapping blobs, so the labels move with nprobe
    assert recall_at_k(knn(x, 10, mode="approx", nlist=40, nprobe=1)[1], exact_idx) < 0.99
    assert not np.array_equal(make_pseudo_labels(feats, one_list).labels_dbscan, exact.labels_dbscan)


# ---------------------------------------------------------------- neighbours
def test_cluster_neighbours_by_hand():
    memory = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.8, -0.6]])
    labels = torch.tensor([0, 0, 1, 2, 3])
    idx, sim = cluster_neighbours(memory, labels, 2)
    # centroids: c0=(1,0) (mean of two equal slots) c1=(0,1) c2=(.6,.8) c3=(-.8,-.6)
    np.testing.assert_array_equal(idx.numpy(), [[2, 1], [2, 0], [1, 0], [1, 0]])
    np.testing.assert_allclose(sim.numpy(), [[0.6, 0.0], [0.8, 0.0], [0.8, 0.6], [-0.6, -0.8]], atol=1e-6)
    idx_all, _ = cluster_neighbours(memory, labels, 10)  # clamped to C − 1
    assert idx_all.shape == (4, 3)


def test_cluster_neighbours_blocks_match_one_block():
    g = torch.Generator().manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    labels = torch.randint(0, 25, (60,), generator=g)
    labels = torch.unique(labels, return_inverse=True)[1]
    a = cluster_neighbours(memory, labels, 4, block=7)
    b = cluster_neighbours(memory, labels, 4, block=1000)
    torch.testing.assert_close(a[1], b[1])
    assert not (a[0] == torch.arange(a[0].shape[0])[:, None]).any()


@pytest.mark.parametrize("allknn,epoch,epochs,expected", [(10, 0, 60, 0), (10, 5, 60, 0), (10, 6, 60, 1),
                                                         (10, 59, 60, 9), (3, 20, 60, 1), (5, 47, 60, 3)])
def test_curriculum_k(allknn, epoch, epochs, expected):
    assert curriculum_k(allknn, epoch, epochs) == expected


def test_oracle_labels_follow_identities_or_outfits_in_record_order() -> None:
    from pathlib import Path

    from maskcl.cluster.oracle import oracle_labels
    from maskcl.data.records import Record

    records = [Record(Path(f"{i}.png"), pid, clothes, 0) for i, (pid, clothes) in
               enumerate([(7, 3), (2, 1), (7, 4), (2, 1), (9, 5)])]
    by_id = oracle_labels(records, "identity")
    assert by_id.labels.tolist() == [1, 0, 1, 0, 2] and by_id.n_clusters == 3 and by_id.n_unclustered == 0
    by_outfit = oracle_labels(records, "clothes")
    assert by_outfit.labels.tolist() == [1, 0, 2, 0, 3] and by_outfit.n_clusters == 4
    with pytest.raises(ValueError, match="cluster.oracle"):
        oracle_labels(records, "camera")
