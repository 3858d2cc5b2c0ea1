"""Exact and approximate k-nearest-neighbour search on L2-normalised features.

Pseudo-labelling needs, for every training image, its ``k`` most similar images by cosine
(equivalently by the squared Euclidean distance ``2 − 2·cos`` of unit vectors, which is what
the k-reciprocal re-ranking uses). Exact search is an ``N²·D`` matrix product, the floor of the
whole pseudo-labelling step, so it is handed to the best BLAS at hand:

* ``torch`` (default): tiled ``matmul`` + ``topk`` over the upper triangle of ``X·Xᵀ`` only
  (self-search is symmetric, so half the flops), on the features' device (GPU for CUDA
  tensors). On the 2-core development machine it beat faiss 4-5× at N = 10k-28k.
* ``faiss``: ``IndexFlatIP`` (faiss' blocked sgemm + heap top-k, multi-threaded), kept as an
  option and as the cross-check of the torch path.

``mode="approx"`` finds candidates in a PCA-reduced space (cheap ``N²·p`` search with
``p ≪ D``) and re-ranks them with the exact full-dimension cosine, so the returned similarities
are exact and only the recall can suffer (``benchmarks/cluster.py`` measures it: on 2 CPU
cores it is not faster than the exact torch search, whose cost the N² top-k shares, and its
recall on isotropic 2048-d blobs is 0.7–0.9; it is meant for low-rank real features on
machines where the N²·D product dominates).

Every result row ``i`` starts with ``i`` itself (similarity of the sample with itself), which the
k-reciprocal code relies on; ties (duplicate features) are resolved so that this holds.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "torch")
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


def _faiss_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    sims, idx = index.search(queries, k)
    return sims, idx.astype(np.int64, copy=False)


def _torch_self_search(feats: Any, k: int, tile: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact self-kNN computing only the upper triangle of ``X Xᵀ`` (half the flops).

    Tile (a, b) with a ≤ b gives row-block a its top-k among columns b and, transposed,
    row-block b its top-k among columns a; each row's candidate lists (one per tile column,
    k each) are merged by a final top-k. Exact: every similarity is computed once in fp32.
    """
    import torch

    x = torch.as_tensor(feats)
    if x.dtype != torch.float32:
        x = x.float()
    n = x.shape[0]
    starts = list(range(0, n, tile))
    cand_v: list[list[Any]] = [[] for _ in starts]
    cand_i: list[list[Any]] = [[] for _ in starts]
    with torch.no_grad():
        for bi, a in enumerate(starts):
            xa = x[a : a + tile]
            for bj in range(bi, len(starts)):
                b = starts[bj]
                s = xa @ x[b : b + tile].T  # [ta, tb]
                kr = min(k, s.shape[1])
                v, i = torch.topk(s, kr, dim=1)
                cand_v[bi].append(v)
                cand_i[bi].append(i + b)
                if bj != bi:
                    kc = min(k, s.shape[0])
                    v, i = torch.topk(s, kc, dim=0)  # [kc, tb]
                    cand_v[bj].append(v.T)
                    cand_i[bj].append(i.T + a)
        sims_out, idx_out = [], []
        for bi in range(len(starts)):
            v = torch.cat(cand_v[bi], dim=1)
            i = torch.cat(cand_i[bi], dim=1)
            cand_v[bi] = cand_i[bi] = []  # free as we go
            top_v, pos = torch.topk(v, k, dim=1)
            sims_out.append(top_v.cpu())
            idx_out.append(torch.gather(i, 1, pos).cpu())
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
    if backend == "faiss":
        x = _as_numpy_f32(feats)
        return _faiss_search(x, x, k)
    if _is_cuda_tensor(feats):
        return _torch_self_search(feats, k)
    return _torch_self_search(_as_numpy_f32(feats), k)


def pca_project(x: np.ndarray, dim: int, fit_rows: int = 8192, seed: int = 0) -> np.ndarray:
    """Project [N, D] onto its top-``dim`` principal directions (fitted on ≤ fit_rows rows).

    The projection is only used to *find candidates*. The directions are fitted on centred
    data, but the rows are projected uncentred so that ``⟨Px, Py⟩`` approximates ``⟨x, y⟩``
    itself (centring would add terms that depend on the candidate).
    """
    import torch

    n = x.shape[0]
    rng = np.random.default_rng(seed)
    fit = x if n <= fit_rows else x[np.sort(rng.choice(n, fit_rows, replace=False))]
    a = torch.from_numpy(fit)
    a = a - a.mean(0, keepdim=True)
    # randomised range finder with two power iterations (Halko et al. 2011), then an exact
    # SVD of the small projection: ~0.5 s for 8k×2048 where a full eigh takes seconds
    q = min(dim + 16, *fit.shape)
    gen = torch.Generator().manual_seed(seed)
    y = a.T @ (a @ torch.randn(a.shape[1], q, generator=gen))  # [D, q]
    for _ in range(2):
        y = a.T @ (a @ torch.linalg.qr(y)[0])
    basis_q = torch.linalg.qr(y)[0]  # [D, q]
    _, _, vh = torch.linalg.svd(a @ basis_q, full_matrices=False)
    basis = (basis_q @ vh.T)[:, :dim].contiguous()  # [D, dim], top principal directions
    return np.ascontiguousarray((torch.from_numpy(x) @ basis).numpy())


def _approx(
    feats: Any, k: int, backend: str, pca_dim: int, n_candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """PCA candidates (top ``n_candidates`` in the reduced space) re-ranked by exact cosine."""
    import torch

    x = _as_numpy_f32(feats)
    n, d = x.shape
    c = min(n, max(n_candidates, k))
    if pca_dim >= d:
        return _exact(x, k, backend)
    z = pca_project(x, pca_dim)
    if backend == "faiss":
        _, cand = _faiss_search(z, z, c)
    else:
        _, cand = _torch_self_search(z, c)
    x_t = torch.from_numpy(x)
    cand_t = torch.from_numpy(cand)
    sims = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    block = max(1, (32 << 20) // (c * d))  # gathered block [b, c, D] ~ 128 MiB
    with torch.no_grad():
        for s in range(0, n, block):
            cb = cand_t[s : s + block]  # [b, c]
            g = x_t[cb]  # [b, c, D]
            exact = torch.bmm(g, x_t[s : s + block].unsqueeze(2)).squeeze(2)  # [b, c]
            vals, pos = torch.topk(exact, k, dim=1)
            sims[s : s + block] = vals.numpy()
            idx[s : s + block] = torch.gather(cb, 1, pos).numpy()
    return sims, idx


def knn(
    feats: Any,
    k: int,
    backend: str = "auto",
    mode: str = "exact",
    *,
    pca_dim: int = 128,
    n_candidates: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row of ``feats`` among all rows, by cosine.

    Args:
        feats: [N, D] L2-normalised features (numpy, or a torch tensor on any device; a CUDA
            tensor is searched on its GPU with the torch backend).
        k: neighbours per row, self included (``k ≤ N``).
        backend: ``auto`` (= torch, see the module docstring), ``faiss`` or ``torch``.
        mode: ``exact`` or ``approx`` (PCA-reduced candidates re-ranked exactly).
        pca_dim: approx only, reduced dimension of the candidate search.
        n_candidates: approx only, candidates re-ranked per row (default ``max(2k, k + 32)``).

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
        if n_candidates is None:
            n_candidates = max(2 * k, k + 32)
        sims, idx = _approx(feats, k, resolved, pca_dim, n_candidates)
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
