"""DBSCAN on a sparse precomputed distance matrix, label-for-label equal to scikit-learn's.

The Jaccard matrix is stored sparse with absent pairs meaning distance 1. As long as
``eps < 1`` an absent pair can never be an eps-neighbour (scikit-learn's test is
``d ≤ eps``), so DBSCAN on the sparse matrix is exactly DBSCAN on the dense one.

Rather than building scikit-learn's per-sample neighbourhood arrays, the clustering is
computed with whole-array operations: core points are the samples with at least
``min_samples`` eps-neighbours (self included); clusters are the connected components of the
core–core eps-graph; a border point (non-core with a core neighbour) joins the cluster with the
smallest label among its core neighbours' clusters; clusters are numbered by their smallest
core index. That is exactly what scikit-learn's depth-first ``dbscan_inner`` produces (it starts
clusters at core points in index order and never relabels a point), which the tests check.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


def dbscan_sparse(dist: sp.csr_matrix, eps: float, min_samples: int, upper: bool = False) -> np.ndarray:
    """DBSCAN labels ([N] int64, −1 = noise) of a sparse precomputed distance matrix.

    Args:
        dist: [N, N] CSR distances; absent entries mean "farther than eps" (distance 1 for the
            Jaccard matrix). The diagonal need not be stored: a sample is always its own
            neighbour.
        eps: neighbourhood radius (``d ≤ eps``), must be < 1 for the absent = 1 convention.
        min_samples: neighbours (self included) that make a core point.
        upper: ``dist`` holds only the upper triangle of a symmetric matrix (each pair once).
    """
    if not 0 <= eps < 1:
        raise ValueError(f"dbscan_sparse: eps={eps} must be in [0, 1) (absent pairs have distance 1)")
    dist = sp.csr_matrix(dist)
    n = dist.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(dist.indptr))
    near = (dist.data <= eps) & (rows != dist.indices)  # eps-neighbours, self handled separately
    r, c = rows[near].astype(np.int64), dist.indices[near].astype(np.int64)
    del rows
    if upper:
        r, c = np.concatenate([r, c]), np.concatenate([c, r])
    n_neigh = np.bincount(r, minlength=n) + 1  # + self
    core = n_neigh >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    if not core.any():
        return labels
    both = core[r] & core[c]
    graph = sp.csr_matrix((np.ones(int(both.sum()), dtype=np.int8), (r[both], c[both])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # number clusters by their smallest core index (scikit-learn's visiting order)
    core_idx = np.flatnonzero(core)
    core_comp = comp[core_idx]
    first = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, core_comp, core_idx)
    used = np.flatnonzero(first < n)
    rank = np.empty(comp.max() + 1, dtype=np.int64)
    rank[used[np.argsort(first[used], kind="stable")]] = np.arange(used.size)
    labels[core_idx] = rank[core_comp]
    # border points: the smallest cluster label among their core neighbours
    border = ~core[r] & core[c]
    if border.any():
        best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, r[border], labels[c[border]])
        is_border = best < np.iinfo(np.int64).max
        labels[is_border] = best[is_border]
    return labels


def singleton_labels(labels: np.ndarray) -> np.ndarray:
    """The authors' relabelling: noise sample k (in index order) gets ``n_clusters + k``."""
    out = labels.astype(np.int64, copy=True)
    noise = out < 0
    n_clusters = int(out.max()) + 1 if (~noise).any() else 0
    out[noise] = n_clusters + np.arange(int(noise.sum()))
    return out
