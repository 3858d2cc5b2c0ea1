"""Exact and approximate k-nearest-neighbour search on L2-normalised features.

Pseudo-labelling needs, for every training image, its ``k`` most similar images by cosine
(equivalently by the squared Euclidean distance ``2 − 2·cos`` of unit vectors, which is what
the k-reciprocal re-ranking uses). Exact search is an ``N²·D`` matrix product, the floor of the
whole pseudo-labelling step, so it is handed to the best BLAS at hand:

* ``torch`` (default): tiled ``matmul`` + ``topk`` over the upper triangle of ``X·Xᵀ`` only
  (self-search is symmetric, so half the flops), on the features' device (GPU for CUDA
  tensors), each tile's candidates merged at once into a running top-k per row block, so the
  memory is O(N·k) beyond the features (the previous version kept one list per column tile:
  +2.3 GB at N = 100k, ~16 GB at 300k). On the 2-core development machine it beat faiss 4-5×
  at N = 10k-28k.
* ``faiss``: ``IndexFlatIP`` (faiss' blocked sgemm + heap top-k, multi-threaded), kept as an
  option and as the cross-check of the torch path; ``GpuIndexFlatIP`` for CUDA features when
  the installed faiss has GPU support (``faiss-gpu-cu12``, the ``gpu`` extra).

``mode="approx"`` is an inverted-file (IVF) search in torch: spherical k-means on a sample
gives ``nlist`` lists (default ≈ 2·√N), every sample is filed under its nearest centroid and
searches its ``nprobe`` nearest lists (default 8) with exact fp32 cosines, batched per list
(one matmul + ``topk`` per list for all the queries probing it). The cost is ≈ N·nprobe·(N/nlist)·D
instead of N²·D/2 and there is no top-k over N² candidates, so it wins at large N only (2 shared
cores, ``benchmarks/README.md``: 3.0× faster than exact at N = 28k, 0.84× at 10k). Returned
similarities are exact; only the recall can suffer: on the benchmark's isotropic 2048-d blobs
~30 % of the exact neighbours are noise points at near-equal cosines that no partition finds
(recall@30 ≈ 0.73), while 0.99 of the same-identity neighbours are found and the final labels
move by ARI 0.996; on clustered data recall is ≥ 0.95 (tests). ``mode="exact"`` stays the default.

Every result row ``i`` starts with ``i`` itself (similarity of the sample with itself), which the
k-reciprocal code relies on; ties (duplicate features) are resolved so that this holds.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "torch")
_INDEX_MAX = 0x7FFFFFFF  # sample indices must fit in 31 bits (the low half of a selection key)
MODES = ("exact", "approx")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _as_numpy_f32(feats: Any) -> np.ndarray:
    """[N, D] float32 C-contiguous numpy view/copy of a numpy array or (any-device) tensor."""
    if not isinstance(feats, np.ndarray):
        feats = feats.detach().float().cpu().numpy()
    return np.ascontiguousarray(feats, dtype=np.float32)


def _is_cuda_tensor(feats: Any) -> bool:
    return getattr(feats, "is_cuda", False) is True


def _put_self_first(sims: np.ndarray, idx: np.ndarray, self_sims: np.ndarray) -> None:
    """In place: make column 0 of row i be i itself.

    With exact search the sample is its own best match except under ties (duplicate features)
    or rounding; the k-reciprocal code needs self first, so the few offending rows are fixed:
    self is moved to the front when present, otherwise inserted (dropping the last column).
    """
    n = idx.shape[0]
    rows = np.flatnonzero(idx[:, 0] != np.arange(n))
    for i in rows:  # only rows with ties/rounding; normally none
        row_idx, row_sim = idx[i], sims[i]
        where = np.flatnonzero(row_idx == i)
        if where.size:
            p = where[0]
            row_idx[1 : p + 1] = row_idx[:p].copy()
            row_sim[1 : p + 1] = row_sim[:p].copy()
        else:
            row_idx[1:] = row_idx[:-1].copy()
            row_sim[1:] = row_sim[:-1].copy()
        row_idx[0] = i
        row_sim[0] = self_sims[i]


def faiss_gpu_available() -> bool:
    """faiss with GPU support (the faiss-gpu wheels) and at least one visible GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _faiss_search(
    base: np.ndarray, queries: np.ndarray, k: int, gpu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search with faiss: ``IndexFlatIP``, or ``GpuIndexFlatIP`` on GPU 0."""
    import faiss

    if gpu:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(res, base.shape[1])
    else:
        index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    sims, idx = index.search(queries, k)
    return sims, idx.astype(np.int64, copy=False)


def _order_keys(v: Any, i: Any) -> Any:
    """int64 keys ordering (similarity, index) pairs: larger key = higher similarity, then smaller index.

    The float32 similarity is mapped to an order-preserving int32 (its bit pattern, with the
    magnitude bits of negative values flipped; −0.0 folded into +0.0) in the high 32 bits and
    ``2³¹ − 1 − index`` fills the low 32 bits, so one integer ``topk``/``sort`` follows a total
    order: exact ties between similarities go to the smaller index, whatever the order in which
    the candidates arrived.
    """
    import torch

    bits = (v + 0.0).contiguous().view(torch.int32).long()  # + 0.0: −0.0 → +0.0
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (ordered << 32) | (_INDEX_MAX - i)


def _best_k(v: Any, i: Any | None, k: int, offset: int = 0) -> tuple[Any, Any]:
    """The k best (similarity, index) pairs of every row of ``v`` [R, C] under the total order
    of :func:`_order_keys` (not sorted among themselves).

    ``i`` [R, C] holds the candidates' sample indices, or is None for a similarity tile whose
    column c is sample ``offset + c``. A float ``topk`` of k + 1 entries finds the k best; only
    rows whose k-th and (k+1)-th values are equal (an exact tie across the boundary: duplicate
    features, rare) are re-selected with the integer keys, so the kept set never depends on
    the order in which tied candidates arrive.
    """
    import torch

    r, c = v.shape
    if c <= k:  # every candidate is kept: nothing to choose (a copy: ``v`` may be a reused buffer)
        if i is None:
            i = torch.arange(offset, offset + c, device=v.device).expand(r, c)
        return v.clone(), i
    tv, pos = torch.topk(v, k + 1, dim=1, sorted=True)
    tie = torch.nonzero(tv[:, k - 1] == tv[:, k]).flatten()
    tv, pos = tv[:, :k], pos[:, :k]
    ti = pos + offset if i is None else torch.gather(i, 1, pos)
    if tie.numel():
        sub_v = v[tie]
        sub_i = torch.arange(offset, offset + c, device=v.device).expand(tie.numel(), c) if i is None else i[tie]
        _, p2 = torch.topk(_order_keys(sub_v, sub_i), k, dim=1)
        tv[tie] = torch.gather(sub_v, 1, p2)
        ti[tie] = torch.gather(sub_i, 1, p2)
    return tv, ti


class _RunningTopK:
    """The best k (similarity, index) candidates of each row block, merged as tiles arrive.

    Per row block: its current top-k ([rows, k] similarities + indices) and at most
    ``merge_every`` pending [rows, ≤ k] tile results, folded in by one selection when that many
    have arrived (fewer, larger selections: each small torch op costs a thread-pool round trip).
    So the state is at most N·k·12·(1 + merge_every) bytes: O(N·k) whatever N, where the
    previous search kept one [rows, k] list per column tile (O(N²/tile·k)). ``peak_bytes`` is
    the most this state and the tile in flight held at once (the memory test reads it).
    """

    def __init__(self, n_blocks: int, k: int, merge_every: int = 4) -> None:
        self.k = k
        self.merge_every = merge_every
        self.v: list[Any] = [None] * n_blocks
        self.i: list[Any] = [None] * n_blocks
        self.pending: list[list[tuple[Any, Any]]] = [[] for _ in range(n_blocks)]
        self.state_bytes = 0
        self.peak_bytes = 0

    @staticmethod
    def _nbytes(*ts: Any) -> int:
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def add(self, block: int, v: Any, i: Any, tile_bytes: int) -> None:
        """Queue one tile's candidates ``v``, ``i`` [rows, ≤ k] for row block ``block``."""
        self.pending[block].append((v, i))
        self.state_bytes += self._nbytes(v, i)
        self.peak_bytes = max(self.peak_bytes, self.state_bytes + tile_bytes)
        if len(self.pending[block]) >= self.merge_every:
            self.merge(block)

    def merge(self, block: int) -> None:
        """Fold the pending candidates of ``block`` into its top-k."""
        import torch

        parts = self.pending[block]
        if not parts:
            return
        old = (self.v[block], self.i[block])
        vs = ([old[0]] if old[0] is not None else []) + [p[0] for p in parts]
        is_ = ([old[1]] if old[1] is not None else []) + [p[1] for p in parts]
        v, i = _best_k(torch.cat(vs, dim=1), torch.cat(is_, dim=1), self.k)
        self.peak_bytes = max(self.peak_bytes, self.state_bytes + 2 * self._nbytes(v, i))
        self.state_bytes += self._nbytes(v, i) - self._nbytes(*old) - sum(self._nbytes(*p) for p in parts)
        self.v[block], self.i[block] = v, i
        self.pending[block] = []

    def result(self, block: int) -> tuple[Any, Any]:
        """Block ``block``'s top-k, each row sorted best first (similarity, then smaller index)."""
        import torch

        self.merge(block)
        v, i = self.v[block], self.i[block]
        _, pos = torch.sort(_order_keys(v, i), dim=1, descending=True)
        return torch.gather(v, 1, pos), torch.gather(i, 1, pos)


def _torch_self_search(
    feats: Any, k: int, tile: int = 2048, stats: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact self-kNN computing only the upper triangle of ``X Xᵀ`` (half the flops), in O(N·k) memory.

    Tile (a, b) with a ≤ b gives row-block a its top-k among columns b and, transposed,
    row-block b its top-k among columns a; both go straight into those blocks' running top-k
    (:class:`_RunningTopK`), so besides the features the memory is the N·k result (and a few
    pending tile results per block) plus one [tile, tile] tile, whatever N. Exact: every
    similarity is computed once in fp32; the selection follows a total order (similarity, then
    smaller index: :func:`_order_keys`), so exact ties are resolved the same way whatever the
    tiling, and rows come out sorted by that order. ``stats``, if given, receives
    ``peak_state_bytes`` (candidate state + the tile in flight) and ``tile_bytes``.
    """
    import torch

    x = torch.as_tensor(feats)
    if x.dtype != torch.float32:
        x = x.float()
    n = x.shape[0]
    if n - 1 > _INDEX_MAX:
        raise ValueError(f"knn: N={n} samples; the exact search supports at most {_INDEX_MAX + 1}")
    starts = list(range(0, n, tile))
    state = _RunningTopK(len(starts), k)
    tile_bytes = 0
    sims_out, idx_out = [], []
    # the tile and its transposed copy live in two buffers allocated once: fresh 16 MB tiles
    # interleaved with the small long-lived candidate lists fragment the heap (glibc serves
    # them from it once its mmap threshold has risen), and that RSS was never given back
    width = min(tile, n)
    tile_buf = torch.empty(width * width, dtype=x.dtype, device=x.device)
    trans_buf = torch.empty(width * width, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for bi, a in enumerate(starts):
            xa = x[a : a + tile]
            for bj in range(bi, len(starts)):
                b = starts[bj]
                xb = x[b : b + tile]
                s = torch.mm(xa, xb.T, out=tile_buf[: xa.shape[0] * xb.shape[0]].view(xa.shape[0], xb.shape[0]))
                tile_bytes = max(tile_bytes, 2 * s.numel() * s.element_size())  # + its transpose
                state.add(bi, *_best_k(s, None, k, offset=b), tile_bytes)
                if bj != bi:  # columns b.. among rows a..: row-wise on a contiguous copy (2× faster)
                    st = trans_buf[: s.numel()].view(s.shape[1], s.shape[0]).copy_(s.T)
                    state.add(bj, *_best_k(st, None, k, offset=a), tile_bytes)
                del s
            # row block bi has met every column tile: final
            v, i = state.result(bi)
            state.v[bi] = state.i[bi] = None
            sims_out.append(v.cpu())
            idx_out.append(i.cpu())
    if stats is not None:
        stats.update(peak_state_bytes=state.peak_bytes, tile_bytes=tile_bytes)
    return torch.cat(sims_out).numpy(), torch.cat(idx_out).numpy().astype(np.int64, copy=False)


def _resolve_backend(backend: str, cuda: bool) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"knn backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        # torch: measured 4-5× faster than faiss IndexFlatIP here (benchmarks/README.md),
        # mostly from computing only half of the symmetric X·Xᵀ
        return "torch"
    if backend == "faiss" and not faiss_available():
        raise ImportError("knn backend 'faiss' requested but faiss is not installed (pip install faiss-cpu)")
    return backend


def _exact(feats: Any, k: int, backend: str) -> tuple[np.ndarray, np.ndarray]:
    if backend == "faiss":  # features on a GPU: faiss' GPU index when faiss has GPU support
        gpu = _is_cuda_tensor(feats) and faiss_gpu_available()
        x = _as_numpy_f32(feats)
        return _faiss_search(x, x, k, gpu=gpu)
    if _is_cuda_tensor(feats):
        return _torch_self_search(feats, k)
    return _torch_self_search(_as_numpy_f32(feats), k)


def _spherical_kmeans(x: Any, nlist: int, iters: int, train_rows: int, seed: int) -> Any:
    """[nlist, D] unit centroids of a seeded random sample of ``x`` [N, D] (torch, x's device).

    Lloyd iterations on the sphere (assign by cosine, centroid = normalised mean); an empty
    list is re-seeded with a random sample row. Only the coarse partition of the IVF search
    depends on it, so a few iterations on a sample suffice.
    """
    import torch

    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(n, generator=gen)[: min(n, train_rows)].to(x.device)]
    cent = sample[torch.randperm(sample.shape[0], generator=gen)[:nlist].to(x.device)].clone()
    sample_np = sample.numpy() if x.device.type == "cpu" else None
    if sample_np is not None:
        import scipy.sparse as sp

        ones = np.ones(sample.shape[0], dtype=np.float32)
        rows = np.arange(sample.shape[0])
    for _ in range(iters):
        assign = torch.argmax(sample @ cent.T, dim=1)  # [S]
        if sample_np is not None:  # per-list sums: a sparse one-hot product, 2-5× faster than index_add_
            onehot = sp.csr_matrix((ones, (assign.numpy(), rows)), shape=(nlist, sample.shape[0]))
            sums = torch.from_numpy(np.asarray(onehot @ sample_np, dtype=np.float32))  # [nlist, D]
        else:
            sums = torch.zeros_like(cent).index_add_(0, assign, sample)
        empty = torch.bincount(assign, minlength=nlist) == 0
        if bool(empty.any()):
            pick = torch.randint(0, sample.shape[0], (int(empty.sum()),), generator=gen).to(x.device)
            sums[empty] = sample[pick]
        cent = torch.nn.functional.normalize(sums, dim=1)
    return cent


def default_nlist(n: int) -> int:
    """IVF lists for N samples: ≈ 2·√N (335 at N = 28k), i.e. lists of ≈ √N/2 samples."""
    return max(1, min(n, int(round(2.0 * np.sqrt(n)))))


def _ivf_search(
    feats: Any, k: int, nlist: int, nprobe: int, kmeans_iters: int, train_per_list: int, seed: int,
    max_block: int = 1 << 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate self-kNN: inverted file (IVF) on a spherical k-means partition, in torch.

    Every sample is filed under its nearest centroid and searches its ``nprobe`` nearest
    lists (per query, as faiss' ``IndexIVFFlat``), with exact fp32 cosines. Unlike faiss'
    per-query list scans, the work is batched per list: all queries probing list M are
    gathered and multiplied with M's rows (gathered once per list into a reused buffer: no
    sorted copy of the features, which at N = 1M, D = 2048 would be another 8 GB) in one
    matmul, then ``topk``; candidate indices are int32. Cost ≈ N·nprobe·(N/nlist)·D plus the k-means and assignment (N·nlist·D),
    against N²·D/2 for the exact search; no top-k over N² candidates. Rows that found fewer
    than k candidates (tiny lists) are completed by an exact search of those rows.
    """
    import torch

    x = torch.as_tensor(feats)
    if x.dtype != torch.float32:
        x = x.float()
    n = x.shape[0]
    nlist = max(1, min(nlist, n))
    nprobe = max(1, min(nprobe, nlist))
    with torch.no_grad():
        cent = _spherical_kmeans(x, nlist, kmeans_iters, max(train_per_list * nlist, 1024), seed)
        probes = torch.cat(
            [torch.topk(x[s : s + 8192] @ cent.T, nprobe, dim=1).indices for s in range(0, n, 8192)]
        )  # [N, nprobe], column 0 = the sample's own list
        order = torch.argsort(probes[:, 0], stable=True)  # sample positions sorted by list
        starts = [0] + torch.cumsum(torch.bincount(probes[:, 0], minlength=nlist), 0).tolist()
        # (query position in list order) · nprobe + probe slot, for every probed list, grouped
        # by list; the rows are gathered from x per list (no sorted copy of the N×D features)
        flat = probes[order].reshape(-1)
        del probes
        by_list = torch.argsort(flat, stable=True)
        q_rows = order[torch.div(by_list, nprobe, rounding_mode="floor")]  # rows of x
        q_starts = [0] + torch.cumsum(torch.bincount(flat, minlength=nlist), 0).tolist()
        del flat
        # candidates of (query, probe slot) in row q·nprobe + slot, as positions in list order
        # (int32: 4 bytes a candidate); a list smaller than k leaves −inf padding
        cand_v = torch.full((n * nprobe, k), -float("inf"), device=x.device)
        cand_i = torch.zeros((n * nprobe, k), dtype=torch.int32, device=x.device)
        # work buffers reused by every list (fresh multi-MB tensors would be page-faulted in)
        sizes = [starts[m + 1] - starts[m] for m in range(nlist)]
        q_max = max(1, min(max(q_starts[m + 1] - q_starts[m] for m in range(nlist)), max_block // max(sizes)))
        q_buf = torch.empty((q_max, x.shape[1]), device=x.device)
        b_buf = torch.empty((max(sizes), x.shape[1]), device=x.device)
        s_buf = torch.empty(q_max * max(sizes), device=x.device)
        cpu = x.device.type == "cpu"
        x_np = x.numpy() if cpu else None
        q_buf_np = q_buf.numpy() if cpu else None
        b_buf_np = b_buf.numpy() if cpu else None
        q_rows_np = q_rows.numpy() if cpu else None
        order_np = order.numpy() if cpu else None
        for m in range(nlist):
            m0, m1 = starts[m], starts[m + 1]
            if m0 == m1:
                continue
            kk = min(k, m1 - m0)
            if x_np is not None:  # numpy's take gathers rows ~5× faster than index_select
                np.take(x_np, order_np[m0:m1], axis=0, out=b_buf_np[: m1 - m0])
                base = b_buf[: m1 - m0]
            else:
                base = torch.index_select(x, 0, order[m0:m1], out=b_buf[: m1 - m0])
            for g0 in range(q_starts[m], q_starts[m + 1], q_max):
                g1 = min(q_starts[m + 1], g0 + q_max)
                if x_np is not None:
                    np.take(x_np, q_rows_np[g0:g1], axis=0, out=q_buf_np[: g1 - g0])
                    q = q_buf[: g1 - g0]
                else:
                    q = torch.index_select(x, 0, q_rows[g0:g1], out=q_buf[: g1 - g0])
                sim = torch.mm(q, base.T, out=s_buf[: (g1 - g0) * (m1 - m0)].view(g1 - g0, m1 - m0))
                v, i = torch.topk(sim, kk, dim=1)  # [q, kk]
                i = (i + m0).to(torch.int32)
                rows = by_list[g0:g1]  # = query position · nprobe + slot
                if kk == k:
                    cand_v.index_copy_(0, rows, v)
                    cand_i.index_copy_(0, rows, i)
                else:
                    cand_v[rows, :kk] = v
                    cand_i[rows, :kk] = i
        del q_rows, by_list, q_buf, b_buf, s_buf
        cand_v = cand_v.view(n, nprobe * k)
        cand_i = cand_i.view(n, nprobe * k)
        top_v, pos = torch.topk(cand_v, k, dim=1)
        top_i = torch.gather(cand_i, 1, pos).long()
        del cand_v, cand_i, pos
        sims = torch.empty_like(top_v)
        idx = torch.empty_like(top_i)
        sims[order] = top_v
        idx[order] = order[top_i]
        del top_v, top_i
        short = torch.nonzero(~torch.isfinite(sims).all(dim=1)).flatten()
        if short.numel():  # fewer than k candidates: exact search of those rows
            sims[short], idx[short] = torch.topk(x[short] @ x.T, k, dim=1)
    logger.debug("knn approx: IVF nlist=%d nprobe=%d, %d rows completed exactly", nlist, nprobe, int(short.numel()))
    return sims.cpu().numpy(), idx.cpu().numpy().astype(np.int64, copy=False)


def knn(
    feats: Any,
    k: int,
    backend: str = "auto",
    mode: str = "exact",
    *,
    nlist: int | None = None,
    nprobe: int = 8,
    kmeans_iters: int = 8,
    train_per_list: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row of ``feats`` among all rows, by cosine.

    Args:
        feats: [N, D] L2-normalised features (numpy, or a torch tensor on any device; a CUDA
            tensor is searched on its GPU with the torch backend and in approx mode).
        k: neighbours per row, self included (``k ≤ N``).
        backend: exact mode: ``auto`` (= torch, see the module docstring), ``faiss`` or
            ``torch``. The approx mode always runs in torch.
        mode: ``exact`` (default) or ``approx`` (IVF: spherical k-means lists, each sample
            searches its ``nprobe`` nearest lists exactly).
        nlist: approx only, number of IVF lists (default :func:`default_nlist`, ≈ 2·√N).
        nprobe: approx only, lists searched per sample (more = higher recall, linear cost).
        kmeans_iters: approx only, Lloyd iterations of the list centroids.
        train_per_list: approx only, k-means sample rows per list (sample ≤ N).
        seed: approx only, seed of the k-means sample and initialisation.

    Returns:
        ``(sims [N, k] float32, idx [N, k] int64)`` numpy arrays, each row sorted by decreasing
        cosine similarity and starting with the row itself. The squared Euclidean distance of
        unit vectors is ``2 − 2·sims``.
    """
    if mode not in MODES:
        raise ValueError(f"knn mode {mode!r}; expected one of {', '.join(MODES)}")
    n = int(feats.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"knn: k={k} must be between 1 and the number of samples N={n}")
    resolved = _resolve_backend(backend, _is_cuda_tensor(feats))
    if mode == "exact":
        sims, idx = _exact(feats, k, resolved)
    else:
        feats_t = feats if _is_cuda_tensor(feats) else _as_numpy_f32(feats)
        nl = default_nlist(n) if nlist is None else nlist
        sims, idx = _ivf_search(feats_t, k, nl, nprobe, kmeans_iters, train_per_list, seed)
    sims = np.ascontiguousarray(sims, dtype=np.float32)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if np.any(idx[:, 0] != np.arange(n)):
        x = _as_numpy_f32(feats)
        self_sims = np.einsum("nd,nd->n", x, x)
        _put_self_first(sims, idx, self_sims)
    logger.debug("knn: N=%d k=%d backend=%s mode=%s", n, k, resolved, mode)
    return sims, idx


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean fraction of each row's exact k neighbours that the approximate search found."""
    n, k = exact_idx.shape
    offs = (np.arange(n, dtype=np.int64) * (int(max(exact_idx.max(), approx_idx.max())) + 1))[:, None]
    hit = np.isin(exact_idx + offs, approx_idx + offs)
    return float(hit.mean())
