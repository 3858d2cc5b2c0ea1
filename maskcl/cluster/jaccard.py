"""Sparse k-reciprocal Jaccard distance (Zhong et al., CVPR 2017), in O(N·k) memory.

The public code (``faiss_rerank.compute_jaccard_distance``, used by MaskCL/SiCL, SpCL, Cluster
Contrast) builds three dense N×N float32 matrices and loops over samples in Python: 9.6 GB and
minutes at N = 28k. Every quantity it computes is sparse, though:

1. ``R(i)``, the k1-reciprocal set: ``j`` in i's forward list and ``i`` in j's.
2. Expansion: for each candidate ``c ∈ R(i)``, add ``R½(c)`` (its round(k1/2)-reciprocal set)
   when ``|R½(c) ∩ R(i)| > ⅔·|R½(c)|``.
3. ``V[i, j] = exp(−d_ij) / Σ exp(−d_ij')`` over the expanded set, ``d = 2 − 2·cos``.
4. Local query expansion: ``V ← mean of V over the k2 nearest rows`` (k2 rows incl. self).
5. Jaccard: ``s_ij = Σ_l min(V[i,l], V[j,l])`` and ``d_J = 1 − s/(2 − s)`` (rows of V sum to
   one, so ``Σ max = 2 − Σ min``).

Here 1–4 are vectorised over all rows (sorted integer keys and sparse products, no per-sample
loop) and 5 enumerates, block by block of rows, the column-sharing pairs (``i ≤ j`` only, then
mirrored) and sums their minima with ``np.bincount``. ``Σ min`` is not bilinear, so no sparse
product yields it exactly; the enumeration is kept lean instead (one 8-byte gather per pair
instance of a packed (value, row) record, float32 minima, reused buffers, output written in
place: see :func:`_jaccard_upper`). Pairs sharing no column have distance 1 and are not stored.

Fidelity to the authors' code (the variant without the original-distance blend, λ = 0):
``variant="sicl"`` (default) reproduces a side effect of that code: faiss is asked for only
``k1`` neighbours, so the "k1+1" forward list ``initial_rank[i, :k1+1]`` actually holds ``k1``
entries (self included), while the half list holds ``round(k1/2)+1``. ``variant="zhong"`` is the
textbook k1+1. ``round`` is numpy's (half to even), as in the code. Intentional differences:
weights and overlap sums are computed in float64 and the distances stored in float32 (the code
is float32 throughout), which can only move pairs lying within ~1e-7 of ``eps``; cosines come
from the kNN table (or one dot product) rather than a fresh ``torch.mm``; when N ≤ k1 the kNN
table is padded with the sample itself (the code would index faiss' −1 placeholders, i.e. the
last sample). The final clip of negative distances to 0 is kept.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from maskcl.cluster.knn import _as_numpy_f32, knn

logger = logging.getLogger(__name__)

VARIANTS = ("sicl", "zhong")


def search_width(k1: int, variant: str = "sicl") -> int:
    """Neighbours (self included) the kNN table must hold for :func:`jaccard_from_knn`."""
    if variant not in VARIANTS:
        raise ValueError(f"jaccard variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return k1 if variant == "sicl" else k1 + 1


def _reciprocal_mask(idx: np.ndarray, s: int) -> np.ndarray:
    """[N, s] bool: ``idx[i, m]`` is a reciprocal neighbour of i within the first s entries.

    ``j = idx[i, m]`` is reciprocal iff i appears in ``idx[j, :s]``: an [N, s, s] comparison,
    done in row blocks to keep it within a few tens of MB.
    """
    n = idx.shape[0]
    fwd = idx[:, :s].astype(np.int32)
    out = np.empty((n, s), dtype=bool)
    block = max(1, (8 << 20) // (s * s))
    rows = np.arange(n, dtype=np.int32)
    for a in range(0, n, block):
        b = min(n, a + block)
        back = fwd[fwd[a:b]]  # [b, s, s]: forward lists of i's forward neighbours
        out[a:b] = (back == rows[a:b, None, None]).any(axis=2)
    return out


def _csr_from_rows(rows: np.ndarray, cols: np.ndarray, n: int, data: np.ndarray | None = None) -> sp.csr_matrix:
    binary = data is None
    if binary:
        data = np.ones(rows.shape[0], dtype=np.float64)
    m = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0  # a set, even if a pair was listed twice (self-padded tables)
    return m


def _pair_cosines(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """cos(x[rows], x[cols]) for a list of pairs, in float64, in cache-sized blocks.

    Each block gathers ≤ 512 KiB of rows per side, so the dot products read them from cache
    rather than memory: 2.4× faster than 32 MiB gathers at 2048-d (24k pairs: 0.10 against
    0.25 s on the 2-vCPU EPYC), the same bits (each pair's sum is computed alike).
    """
    out = np.empty(rows.shape[0], dtype=np.float64)
    block = max(16, (512 << 10) // (x.shape[1] * x.itemsize))
    for a in range(0, rows.shape[0], block):
        r, c = rows[a : a + block], cols[a : a + block]
        out[a : a + block] = np.einsum("nd,nd->n", x[r], x[c], dtype=np.float64)
    return out


def _expanded_support(idx: np.ndarray, k1: int, width: int) -> sp.csr_matrix:
    """Binary CSR [N, N]: the expanded k-reciprocal set of every row (steps 1–2)."""
    n = idx.shape[0]
    s1 = min(k1 + 1, width)
    s_half = min(int(np.around(k1 / 2)) + 1, width)
    rec = _reciprocal_mask(idx, s1)  # [N, s1]
    rec_h = _reciprocal_mask(idx, s_half)  # [N, s_half]
    ri, rm = np.nonzero(rec)
    R = _csr_from_rows(ri, idx[ri, rm], n)  # R[i, j] = 1  iff  j ∈ R(i)
    hi, hm = np.nonzero(rec_h)
    H = _csr_from_rows(hi, idx[hi, hm], n)  # H[c, j] = 1  iff  j ∈ R½(c)
    size_h = np.diff(H.indptr)  # |R½(c)|
    # |R½(c) ∩ R(i)| for c ∈ R(i): (R Hᵀ)[i, c], read on R's pattern
    inter = (R @ H.T).multiply(R).tocsr()
    inter.sum_duplicates()
    ii = np.repeat(np.arange(n), np.diff(inter.indptr))
    cc = inter.indices
    cnt = inter.data
    take = 3 * cnt > 2 * size_h[cc]  # exact integer form of  cnt > 2/3·|R½(c)|
    E = _csr_from_rows(ii[take], cc[take], n)
    X = R + E @ H
    X.sum_duplicates()
    X.data[:] = 1.0
    X.sort_indices()
    return X


def _weights(x: np.ndarray, sims: np.ndarray, idx: np.ndarray, X: sp.csr_matrix) -> sp.csr_matrix:
    """V (step 3): row-normalised exp(−(2 − 2·cos)) on X's pattern, cosines reused from the kNN."""
    n = X.shape[0]
    w = idx.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(X.indptr))
    cols = X.indices.astype(np.int64)
    keys = rows * n + cols  # ascending (canonical CSR)
    knn_keys = (np.arange(n, dtype=np.int64)[:, None] * n + idx).ravel()
    order = np.argsort(knn_keys, kind="stable")
    knn_sorted = knn_keys[order]
    pos = np.searchsorted(knn_sorted, keys)
    pos_c = np.minimum(pos, knn_sorted.size - 1)
    found = knn_sorted[pos_c] == keys
    cos = np.empty(keys.size, dtype=np.float64)
    cos[found] = sims.ravel()[order[pos_c[found]]]
    missing = ~found
    if missing.any():
        cos[missing] = _pair_cosines(x, rows[missing], cols[missing])
    logger.debug("jaccard weights: %d pairs, %d cosines computed outside the kNN table (width %d)",
                 keys.size, int(missing.sum()), w)
    dist = 2.0 - 2.0 * cos
    # softmax(−dist) per row; subtracting the row minimum keeps exp in range without changing it
    row_min = np.minimum.reduceat(dist, X.indptr[:-1]) if keys.size else dist
    e = np.exp(-(dist - np.repeat(row_min, np.diff(X.indptr))))
    row_sum = np.add.reduceat(e, X.indptr[:-1])
    V = sp.csr_matrix((e / np.repeat(row_sum, np.diff(X.indptr)), X.indices.copy(), X.indptr.copy()), shape=(n, n))
    return V


def _query_expansion(V: sp.csr_matrix, idx: np.ndarray, k2: int) -> sp.csr_matrix:
    """Step 4: row i ← mean of V's rows idx[i, :k2]."""
    if k2 == 1:
        return V
    n = V.shape[0]
    rows = np.repeat(np.arange(n), k2)
    Q = sp.csr_matrix((np.full(n * k2, 1.0 / k2), (rows, idx[:, :k2].ravel())), shape=(n, n))
    Vq = (Q @ V).tocsr()
    Vq.sum_duplicates()
    Vq.sort_indices()
    return Vq


# one CSC entry of V as a single 8-byte record: the partner gather of the overlap step is one
# int64 ``take`` instead of two (row index and value)
_ENTRY = np.dtype([("v", np.float32), ("r", np.int32)])
# overlap step: dense bins while the N²/2 bins are at most this many per pair instance, one
# sort per row block beyond. Measured (benchmark blobs, load 6.4-6.6 on 2 cores): 10k, 8.5
# bins/instance: bins 0.43-0.49 s, sort 0.83-1.1 s; 30k, 31 bins/instance: 1.8-2.0 s each;
# 60k, 110 bins/instance: bins 8.4 s (the N² bins dominate)
_BINS_PER_INSTANCE = 24
_KEY_MAX = 2**31 - 1  # (row, column) key of a pair in the sort path: 31 bits


def _sorted_pair_sums(key: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (ascending) and the float32 sum of the weights of each, by one sort.

    ``key`` [M] int64 < 2³¹ and ``w`` [M] float32 ≥ 0 are packed into one int64 (key in the
    high half, the weight's bits in the low half), so a single in-place ``sort`` groups equal
    keys; the sums (float64, rounded to float32) are segment sums in that order.
    """
    packed = key << 32
    packed |= w.view(np.uint32).astype(np.int64)
    packed.sort()
    keys = packed >> 32
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    vals = (packed & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    sums = np.add.reduceat(vals.astype(np.float64), starts).astype(np.float32)
    return keys[starts], sums


def _jaccard_upper(
    V: sp.csr_matrix,
    block_bins: int = 1 << 18,
    *,
    method: str = "auto",
    block_instances: int = 1 << 22,
    max_distance: float | None = None,
    groups: tuple[np.ndarray, ...] | None = None,
    stats: dict[str, int] | None = None,
) -> sp.csr_matrix:
    """Step 5: Jaccard distances of the pairs i ≤ j sharing a column of V (upper triangle).

    ``s_ij = Σ_l min(V[i,l], V[j,l])`` is not bilinear (no sparse product gives it), so the
    column-sharing pairs are enumerated: for each stored V[i, l] the partners j ≥ i are a
    contiguous range of column l in CSC form (CSC rows are ascending). Blocks of rows accumulate
    their pair minima in a dense [block, N − a] float64 buffer with ``np.bincount``
    (≈ ``block_bins`` bins, about L2-sized); a bin is non-zero iff the pair shares a column
    (every stored V is > 0), and the non-zero bins come out already in CSR order. The bins are
    ~N²/2 in all, whatever the sparsity, so beyond ``_BINS_PER_INSTANCE`` bins per pair
    instance (``method="auto"``, N ≳ 30k) each block of ≈ ``block_instances`` instances is
    reduced by one sort of packed (key, weight) integers instead (:func:`_sorted_pair_sums`):
    memory and time then follow the instances, not N².

    ``max_distance`` keeps only pairs with ``d ≤ max_distance`` and ``groups`` only pairs whose
    two samples share a label in at least one of the given [N] label arrays: the bounded
    support of :func:`maskcl.cluster.pseudo_labels.generate_pseudo_labels` (DBSCAN reads
    ``d ≤ eps`` only, the refinement same-cluster pairs only).

    What makes it fast is fewer passes over the ~N·k²/2 pair instances (≈ 18M at N = 10k,
    k1 = 30): each partner is one 8-byte gather of a packed (value, row) record, the minima are
    taken in float32 (rounding is monotone, so ``min`` of the rounded values is the rounded
    ``min``; the sums stay float64, error ≲ 1e-7 on ``s`` ≤ 1), int64 keys go to ``bincount``
    without a conversion copy, and the output is written into arrays allocated once (an upper
    bound) and shrunk in place, avoiding a final concatenation. Returns CSR float32
    ``1 − s/(2 − s)`` clipped at 0.
    """
    n = V.shape[0]
    nnz = V.nnz
    # CSC of V via scipy (compiled, rows ascending within a column); its data are the CSR
    # positions of the entries, i.e. the permutation CSR → CSC
    order = sp.csr_matrix((np.arange(nnz, dtype=np.int64), V.indices, V.indptr), shape=(n, n)).tocsc()
    order.sort_indices()
    perm = order.data  # CSC slot → CSR position
    colptr = order.indptr.astype(np.int64)
    csc = np.empty(nnz, dtype=_ENTRY)
    csc["r"] = order.indices
    csc["v"] = V.data[perm]
    csc64 = csc.view(np.int64)
    del order
    pos = np.empty(nnz, dtype=np.int64)  # CSR position → CSC slot
    pos[perm] = np.arange(nnz, dtype=np.int64)
    del perm
    counts = colptr[1:][V.indices] - pos  # partners j ≥ i of each entry (itself included)
    own_v = V.data.astype(np.float32)
    entry_row = np.repeat(np.arange(n, dtype=np.int64), np.diff(V.indptr))
    indptr = V.indptr.astype(np.int64)

    inst_before = np.zeros(nnz + 1, dtype=np.int64)  # pair instances of the entries before each
    np.cumsum(counts, out=inst_before[1:])
    row_inst = inst_before[indptr]  # [N + 1] pair instances before each row
    total_inst = int(row_inst[-1])
    if method == "auto":  # dense bins cost ~N²/2 in all; sorting, ~log of the instances each
        method = "bins" if n * (n + 1) / 2 <= _BINS_PER_INSTANCE * max(total_inst, 1) else "sort"
    if method == "bins":
        # row blocks: ≈ block_bins bins each ((rows)·(N − a)); blocks grow as the width shrinks
        starts = [0]
        while starts[-1] < n:
            a = starts[-1]
            starts.append(min(n, a + max(1, block_bins // (n - a))))
    elif method == "sort":
        # row blocks of ≈ block_instances pair instances whose (row, column) keys fit in 31 bits
        starts = [0]
        while starts[-1] < n:
            a = starts[-1]
            by_inst = int(np.searchsorted(row_inst, row_inst[a] + block_instances, side="right")) - 1
            starts.append(min(n, max(a + 1, min(by_inst, a + _KEY_MAX // (n - a)))))
    else:
        raise ValueError(f"jaccard overlap method {method!r}; expected auto, bins or sort")
    bstarts = np.asarray(starts, dtype=np.int64)
    max_total = int(np.diff(row_inst[bstarts]).max(initial=0))
    # work buffers reused by every block (fresh multi-MB arrays would be page-faulted in again)
    ramp = np.arange(max_total, dtype=np.int64)
    partner_buf = np.empty(max_total, dtype=np.int64)  # [total] packed _ENTRY records
    w_buf = np.empty(max_total, dtype=np.float64 if method == "bins" else np.float32)

    # distinct pairs ≤ pair instances: allocate that much, write block after block, shrink;
    # untouched pages of the bound are never faulted in
    bound = max(total_inst, 1)
    ind = np.empty(bound, dtype=np.int32)
    dat = np.empty(bound, dtype=np.float32)
    row_nnz = np.zeros(n, dtype=np.int64)
    filled = 0
    support = 0  # distinct pairs with d < 1 (upper triangle), before max_distance / groups
    for a, b in zip(starts[:-1], starts[1:]):
        width = n - a  # partners j ≥ i ≥ a: keys only for columns a..n−1
        e0, e1 = int(indptr[a]), int(indptr[b])
        total = int(row_inst[b] - row_inst[a])
        if total == 0:
            continue
        cnt = counts[e0:e1]
        # partner slots pos[e] + 0..cnt[e]−1, concatenated (the "ranges" trick)
        p = np.repeat(pos[e0:e1] - (np.cumsum(cnt) - cnt), cnt)
        p += ramp[:total]
        partner = np.take(csc64, p, out=partner_buf[:total], mode="clip").view(_ENTRY)
        del p
        key = np.repeat((entry_row[e0:e1] - a) * width - a, cnt)
        key += partner["r"]  # (i − a)·width + (j − a)
        w = np.minimum(np.repeat(own_v[e0:e1], cnt), partner["v"], out=w_buf[:total])
        if method == "bins":
            acc = np.bincount(key, weights=w, minlength=(b - a) * width)  # [(b − a)·width]
            nz = np.flatnonzero(acc != 0.0)  # (nonzero is fastest on a bool mask)
            s = acc[nz].astype(np.float32)
            del acc
        else:
            nz, s = _sorted_pair_sums(key, w)
        del key, w
        row_first = np.arange(b - a + 1, dtype=np.int64) * width
        rc = np.diff(np.searchsorted(nz, row_first))  # pairs per row (nz is sorted)
        nz -= np.repeat(row_first[:-1] - a, rc)  # → column j
        d = 1.0 - s / (2.0 - s)
        np.maximum(d, 0.0, out=d)
        keep = d < 1.0  # an overlap of ~1e-8 rounds to 1 in float32: same as absent
        support += int(np.count_nonzero(keep))
        if max_distance is not None:
            keep &= d <= max_distance
        if groups is not None:
            rows_i = np.repeat(np.arange(a, b, dtype=np.int64), rc)
            same = np.zeros(nz.size, dtype=bool)
            for g in groups:
                same |= g[rows_i] == g[nz]
            keep &= same
            del rows_i, same
        if not keep.all():
            rc -= np.bincount(np.repeat(np.arange(b - a), rc)[~keep], minlength=b - a)
            nz, d = nz[keep], d[keep]
        ind[filled : filled + nz.size] = nz
        dat[filled : filled + nz.size] = d
        filled += nz.size
        row_nnz[a:b] = rc
    if stats is not None:
        stats.update(instances=total_inst, support_pairs=support, stored_pairs=filled, method=method)
    ind.resize(filled, refcheck=False)  # realloc: shrinks without copying
    dat.resize(filled, refcheck=False)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=ptr[1:])
    U = sp.csr_matrix((dat, ind, ptr), shape=(n, n))
    U.has_sorted_indices = True
    return U


def _symmetrise_upper(U: sp.csr_matrix) -> sp.csr_matrix:
    """Full symmetric CSR from its upper triangle (diagonal stored in every row).

    Row i of the full matrix is column i of U above the diagonal (U's CSC form, rows < i,
    ascending) followed by row i of U (columns ≥ i): the concatenation is already sorted.
    Built by index arithmetic rather than ``U + U.T``, which would also drop explicit zero
    distances (identical neighbourhoods).
    """
    n = U.shape[0]
    C = U.tocsc()  # same entries, column-major; each column's last entry is the diagonal
    lower_cnt = np.diff(C.indptr) - 1
    upper_cnt = np.diff(U.indptr)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lower_cnt + upper_cnt, out=ptr[1:])
    nnz = int(ptr[-1])
    ind = np.empty(nnz, dtype=np.int32)
    dat = np.empty(nnz, dtype=U.data.dtype)
    # lower part: entries of column i except its last (the diagonal)
    keep = np.ones(C.nnz, dtype=bool)
    keep[C.indptr[1:] - 1] = False
    col_of = np.repeat(np.arange(n, dtype=np.int64), lower_cnt)
    k = np.arange(col_of.size, dtype=np.int64) - np.repeat(np.cumsum(lower_cnt) - lower_cnt, lower_cnt)
    dest = ptr[:-1][col_of] + k
    ind[dest] = C.indices[keep]
    dat[dest] = C.data[keep]
    del C, keep, col_of, k, dest
    # upper part: row i of U after its lower part
    row_of = np.repeat(np.arange(n, dtype=np.int64), upper_cnt)
    k = np.arange(U.nnz, dtype=np.int64) - np.repeat(U.indptr[:-1].astype(np.int64), upper_cnt)
    dest = ptr[:-1][row_of] + lower_cnt[row_of] + k
    ind[dest] = U.indices
    dat[dest] = U.data
    S = sp.csr_matrix((dat, ind, ptr), shape=(n, n))
    S.has_sorted_indices = True
    return S


def jaccard_weights(
    feats: Any,
    sims: np.ndarray,
    idx: np.ndarray,
    k1: int,
    k2: int,
    variant: str = "sicl",
    timings: dict[str, float] | None = None,
) -> sp.csr_matrix:
    """Steps 1-4: the k-reciprocal weights V [N, N] (CSR, rows sum to 1) from a kNN table.

    The overlap step (:func:`jaccard_pairs`) reads V; building it once lets the bounded
    pseudo-labelling run that step twice without repeating steps 1-4. Arguments as
    :func:`jaccard_from_knn`.
    """
    width = search_width(k1, variant)
    if idx.shape[1] < width:
        raise ValueError(f"jaccard: kNN table has {idx.shape[1]} columns; k1={k1} ({variant}) needs {width}")
    if not 1 <= k2 <= width:
        raise ValueError(f"jaccard: k2={k2} must be between 1 and {width}")
    idx = np.ascontiguousarray(idx[:, :width])
    sims = np.ascontiguousarray(sims[:, :width])
    t = timings if timings is not None else {}
    t0 = time.perf_counter()
    X = _expanded_support(idx, k1, width)
    t1 = time.perf_counter()
    V = _weights(_as_numpy_f32(feats), sims, idx, X)
    del X
    V = _query_expansion(V, idx, k2)
    t.update({"jaccard_sets_s": t1 - t0, "jaccard_weights_s": time.perf_counter() - t1})
    return V


def jaccard_pairs(
    V: sp.csr_matrix,
    upper: bool = False,
    *,
    max_distance: float | None = None,
    groups: tuple[np.ndarray, ...] | None = None,
    timings: dict[str, float] | None = None,
    key: str = "jaccard_overlap_s",
    stats: dict[str, Any] | None = None,
) -> sp.csr_matrix:
    """Step 5: the Jaccard distances of the pairs sharing support in V (see :func:`jaccard_from_knn`).

    ``max_distance`` / ``groups`` store a subset of the pairs only (``d ≤ max_distance``;
    pairs sharing a label in one of the [N] arrays of ``groups``); ``timings[key]`` receives
    the seconds; ``stats`` (if given) the pair-instance count, the support (distinct pairs with
    d < 1, upper triangle, before any filter), the stored pairs and the overlap method.
    """
    t0 = time.perf_counter()
    U = _jaccard_upper(V, max_distance=max_distance, groups=groups, stats=stats)
    S = U if upper else _symmetrise_upper(U)
    del U
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
    logger.debug("jaccard: N=%d nnz=%d (%.1f per row)", V.shape[0], S.nnz, S.nnz / max(V.shape[0], 1))
    return S


def jaccard_from_knn(
    feats: Any,
    sims: np.ndarray,
    idx: np.ndarray,
    k1: int,
    k2: int,
    variant: str = "sicl",
    timings: dict[str, float] | None = None,
    upper: bool = False,
    max_distance: float | None = None,
) -> sp.csr_matrix:
    """Sparse Jaccard distance from a precomputed kNN table.

    Args:
        feats: [N, D] L2-normalised features (cosines of expanded pairs outside the table).
        sims, idx: [N, W] kNN table from :func:`maskcl.cluster.knn.knn`, self first, with
            ``W ≥ search_width(k1, variant)``; only the first ``search_width`` columns are used.
        k1, k2: k-reciprocal and query-expansion sizes (authors: 30, 6).
        variant: ``sicl`` (the authors' effective k1-wide forward list) or ``zhong``.
        timings: if given, filled with per-sub-step seconds.
        upper: return only the upper triangle (each pair once, diagonal included): half the
            memory, no symmetrisation; :func:`maskcl.cluster.dbscan.dbscan_sparse` and
            :func:`maskcl.cluster.refine.refine_keep` accept it with ``upper=True``.
        max_distance: store only the pairs with ``d ≤ max_distance`` (the others read as 1).

    Returns:
        csr_matrix [N, N] float32 of Jaccard distances in [0, 1) for the pairs that share
        support; absent pairs have distance 1. Symmetric; diagonal stored (0).
    """
    V = jaccard_weights(feats, sims, idx, k1, k2, variant=variant, timings=timings)
    return jaccard_pairs(V, upper, max_distance=max_distance, timings=timings)


def jaccard_distance(
    feats: Any,
    k1: int = 30,
    k2: int = 6,
    *,
    backend: str = "auto",
    knn_mode: str = "exact",
    variant: str = "sicl",
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance of L2-normalised ``feats`` [N, D] as a sparse CSR matrix.

    Only pairs with distance < 1 are stored (absent = 1); memory is O(N·k). See the module
    docstring for the steps and the fidelity notes, :func:`jaccard_from_knn` for the result.
    """
    width = search_width(k1, variant)
    sims, idx = knn(feats, min(width, int(feats.shape[0])), backend=backend, mode=knn_mode)
    if idx.shape[1] < width:  # fewer samples than k1: pad with self (no effect on reciprocity)
        pad = width - idx.shape[1]
        idx = np.concatenate([idx, np.repeat(idx[:, :1], pad, axis=1)], axis=1)
        sims = np.concatenate([sims, np.repeat(sims[:, :1], pad, axis=1)], axis=1)
    return jaccard_from_knn(feats, sims, idx, k1, k2, variant=variant)
