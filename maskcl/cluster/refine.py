"""Cluster refinement (the authors' ``--cr``, ``cluster_finement_new``), on sparse distances.

With ``d`` the Jaccard distance, ``C(i)`` the sample's cluster at ``eps`` and ``T(i)`` its
cluster at the tight ``eps − eps_gap`` (DBSCAN noise counted as singleton clusters in both):

* ``A(C) = Σ_{i,j∈C} d_ij / |C|²``: mean pairwise distance of the cluster, diagonal included;
* ``R(i)``: the samples sharing exactly one of i's two clusters (``C(i) △ T(i)``, almost
  always ``C(i) \\ T(i)``); ``b_i = Σ_{j∈R(i)} d_ij / max(|R(i)|, 1)²``;
* ``B(T) = Σ_{i∈T} b_i``;
* ``i`` keeps its label iff ``ratio_cluster · B(T(i)) ≤ A(C(i))``; otherwise it becomes a
  singleton.

The code materialises N×N label-equality matrices; here every sum over a group is split into
``|group|`` (absent pairs have distance 1) minus the sum of ``1 − d`` over the stored pairs of
the group, so the cost is one pass over the stored entries plus ``np.bincount`` calls.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _group_sizes(labels: np.ndarray) -> np.ndarray:
    """[N] size of each sample's group."""
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inv].astype(np.float64)


def refine_scores(
    dist: sp.csr_matrix, labels: np.ndarray, labels_tight: np.ndarray, upper: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``B(T(i))`` and ``A(C(i))`` ([N] float64 each).

    Args:
        dist: [N, N] CSR distances in [0, 1], absent = 1 (the diagonal, if absent, counts 1 —
            the Jaccard matrix always stores it as 0).
        labels, labels_tight: [N] labels with every noise sample already its own label
            (:func:`maskcl.cluster.dbscan.singleton_labels`).
        upper: ``dist`` holds only the upper triangle of a symmetric matrix (each pair once).
    """
    dist = sp.csr_matrix(dist)
    n = dist.shape[0]
    lab_t = np.int32 if max(int(np.max(labels)), int(np.max(labels_tight))) < 2**30 else np.int64
    labels = np.asarray(labels).astype(lab_t)  # int32 halves the traffic of the per-pair gathers
    labels_tight = np.asarray(labels_tight).astype(lab_t)
    rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(dist.indptr))
    cols = dist.indices
    # only pairs sharing a cluster (loose or tight) enter any sum
    same_c = labels[rows] == labels[cols]
    same_t = labels_tight[rows] == labels_tight[cols]
    used = same_c | same_t
    rows, cols = rows[used].astype(np.int64), cols[used].astype(np.int64)
    sim = 1.0 - dist.data[used].astype(np.float64)  # what a stored pair subtracts from "all are 1"
    same_c, same_t = same_c[used], same_t[used]
    if upper:  # add the mirrored off-diagonal pairs
        off = rows != cols
        rows, cols = np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]])
        sim = np.concatenate([sim, sim[off]])
        same_c = np.concatenate([same_c, same_c[off]])
        same_t = np.concatenate([same_t, same_t[off]])

    size_c = _group_sizes(labels)
    size_t = _group_sizes(labels_tight)
    pair = labels.astype(np.int64) * (int(labels_tight.max()) + 1) + labels_tight
    size_ct = _group_sizes(pair)

    # A(C): per cluster, (|C|² − Σ_{stored i,j∈C} (1 − d)) / |C|², broadcast to members
    in_c = np.bincount(rows[same_c], weights=sim[same_c], minlength=n)  # per row i, over j∈C(i)
    _, inv_c = np.unique(labels, return_inverse=True)
    sum_c = np.bincount(inv_c, weights=in_c)
    a_cluster = (size_c**2 - sum_c[inv_c]) / size_c**2

    # b_i over R(i) = C(i) △ T(i)
    sym = same_c ^ same_t
    size_r = size_c + size_t - 2.0 * size_ct
    sum_r = size_r - np.bincount(rows[sym], weights=sim[sym], minlength=n)
    b = sum_r / np.maximum(size_r, 1.0) ** 2
    _, inv_t = np.unique(labels_tight, return_inverse=True)
    b_tight = np.bincount(inv_t, weights=b)[inv_t]
    return b_tight, a_cluster


def refine_keep(
    dist: sp.csr_matrix,
    labels: np.ndarray,
    labels_tight: np.ndarray,
    ratio_cluster: float = 1.0,
    upper: bool = False,
) -> np.ndarray:
    """[N] bool: which samples keep their cluster (``ratio · B(T(i)) ≤ A(C(i))``)."""
    b_tight, a_cluster = refine_scores(dist, labels, labels_tight, upper=upper)
    return ratio_cluster * b_tight <= a_cluster
