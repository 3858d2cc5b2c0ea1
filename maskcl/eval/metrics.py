"""Vectorised mAP and CMC for re-ID ranking, chunked over queries.

The rule every protocol follows (datasets.md §2): for a query, sort the gallery by distance,
drop the *junk* items (``~keep``), and read the *good* items (true matches) off the remaining
ranking. ``CMC_q[k] = 1`` if the first good item sits at a position ``< k``; the AP is the
non-interpolated mean over the good items of ``hits so far / (position + 1)``. A query with no
good item left is skipped (in neither mean) and counted in ``n_skipped``; if every query is
skipped the metrics are NaN (logged as a warning).

**Ties** are broken deterministically, as a *stable* sort by distance does: equal distances rank
in ascending gallery index (the order of ``DatasetSplits.gallery``, i.e. sorted paths). Exact
ties are not rare: ``2 − 2·cos`` in float32 moves in ~2e-7 steps near 2, so at DeepChange size
most queries have a match tied with some other item. sklearn's ``average_precision_score``
(MaskCL's code) groups tied scores instead, so the two can differ in the last digits.

**Algorithm.** A per-query loop pays ~0.7 ms a query at LTCC size in argsort and Python
overhead, and a full argsort of the matrix is ~5× slower than sorting values. The re-ID rules make
the problem sparse: the items that are not plain negatives (good or junk) all carry the query's
pid, ~100 a row, and only the good items' positions matter. So, per block of query rows:

1. sort the *values* of each distance row (``np.sort``, SIMD-vectorised; ~2/3 of the time);
2. order the candidates (same-pid items) of each row by (distance, gallery index): float32 rows
   pack ``(order-preserving int32 of the distance, column, good bit)`` into one int64 key per
   candidate and sort the small ``[B, M]`` key array;
3. count the gallery items strictly closer than each good item with a branchless binary search
   into the sorted rows, run for all good items of the block at once (no per-row Python);
4. a good item whose value occurs twice gets the equal items at a lower gallery index added
   (found by scanning that row), so the count is exactly its place in the stable order;
5. subtract the junk items ranked before it (its slot among the ordered candidates minus the
   good items before it): that is its position in the junk-free ranking, from which AP and the
   first hit follow in closed form.

Counting the gallery items per candidate bucket instead of sorting (``searchsorted`` of every
item into the sorted candidates, per row or flattened with int64 row offsets) measured 15–20×
slower than the value sort: numpy's binary search is branchy, the SIMD sort is not.

Row blocks of ~2 MB (cache-sized) run on a thread pool (numpy releases the GIL while sorting,
gathering and searching). Queries are processed in chunks sized from a memory budget (default
256 MB, i.e. ~16 bytes per query × gallery element), so DeepChange's 17,527 × 62,956 test split
never materialises the full distance matrix when features are given
(:func:`rule_metrics_from_features`). The result equals a plain per-query loop exactly (tests and
``benchmarks/eval_metrics.py`` check it).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from maskcl.data.records import Record

logger = logging.getLogger(__name__)

RULES = ("standard", "cc", "sc")
RANKS = (1, 5, 10, 20)
DEFAULT_MEMORY_MB = 256
# bytes of working memory per (query, gallery) element of a chunk: distances, their sorted copy,
# and slack for the tie scan's temporaries.
_BYTES_PER_ELEMENT = 16
# a row block's distances (and its sorted copy) should stay in a core's L2 cache (2 MB on the
# development VM): the sort, the candidate gathers and the binary-search probes then hit cache.
# Blocks of 1–4 MB measured ~1.3× faster than one block of the whole chunk at PRCC/DeepChange size.
_BLOCK_BYTES = 2 * 2**20


@dataclass(frozen=True)
class Labels:
    """Per-image labels of one side (query or gallery) as int64 arrays of equal length ``[N]``."""

    pids: np.ndarray
    camids: np.ndarray
    clothes: np.ndarray

    def __post_init__(self) -> None:
        for name in ("pids", "camids", "clothes"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
        if not len(self.pids) == len(self.camids) == len(self.clothes):
            raise ValueError(
                f"Labels: pids/camids/clothes lengths differ: {len(self.pids)}/{len(self.camids)}/{len(self.clothes)}"
            )

    @classmethod
    def from_records(cls, records: Sequence[Record]) -> "Labels":
        return cls(
            np.fromiter((r.pid for r in records), dtype=np.int64, count=len(records)),
            np.fromiter((r.camid for r in records), dtype=np.int64, count=len(records)),
            np.fromiter((r.clothes_id for r in records), dtype=np.int64, count=len(records)),
        )

    def subset(self, index: np.ndarray) -> "Labels":
        return Labels(self.pids[index], self.camids[index], self.clothes[index])

    def __len__(self) -> int:
        return len(self.pids)


def rule_masks(query: Labels, gallery: Labels, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Full ``keep`` and ``good`` masks ``[Nq, Ng]`` of a rule (datasets.md §2); for small inputs and tests.

    ``standard``: good = same pid & other camera, junk = same pid & same camera.
    ``cc``: good additionally needs other clothes; same pid & (same camera | same clothes) is junk.
    ``sc``: good needs the same clothes; same pid & (same camera | other clothes) is junk.
    Other identities are always kept, whatever their camera.
    """
    _check_rule(rule)
    same_pid = query.pids[:, None] == gallery.pids[None, :]
    other_cam = query.camids[:, None] != gallery.camids[None, :]
    good = same_pid & other_cam
    if rule != "standard":
        same_clothes = query.clothes[:, None] == gallery.clothes[None, :]
        good &= ~same_clothes if rule == "cc" else same_clothes
    keep = ~same_pid | good
    return keep, good


def rank_metrics(
    distmat: np.ndarray | torch.Tensor,
    keep: np.ndarray | torch.Tensor,
    good: np.ndarray | torch.Tensor,
    ranks: Sequence[int] = RANKS,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """mAP and CMC from a distance matrix ``[Nq, Ng]`` and per-pair ``keep``/``good`` masks.

    The general entry point: any masks are accepted (``good`` is intersected with ``keep``). It is
    fast when the items that are junk or good are few per row, as in every re-ID rule.
    """
    dist = _as_numpy(distmat)
    keep_a = _as_numpy(keep).astype(bool, copy=False)
    good_a = _as_numpy(good).astype(bool, copy=False) & keep_a
    if dist.ndim != 2 or keep_a.shape != dist.shape or good_a.shape != dist.shape:
        raise ValueError(
            f"distmat {dist.shape}, keep {keep_a.shape}, good {good_a.shape} must be equal 2-D shapes"
        )
    scores = _Scores()
    step = chunk_size or _auto_chunk(dist.shape[1], DEFAULT_MEMORY_MB)
    for start in range(0, dist.shape[0], step):
        rows = slice(start, start + step)
        cand, valid, cand_good = _candidates_from_masks(~keep_a[rows] | good_a[rows], good_a[rows])
        scores.add(*_chunk_scores(dist[rows], cand, valid, cand_good))
    return scores.summary(ranks)


def rule_metrics(
    distmat: np.ndarray | torch.Tensor,
    query: Labels,
    gallery: Labels,
    rule: str = "standard",
    ranks: Sequence[int] = RANKS,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """mAP and CMC of a rule (``standard``/``cc``/``sc``) from a distance matrix ``[Nq, Ng]``."""
    _check_rule(rule)
    dist = _as_numpy(distmat)
    if dist.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat {dist.shape} does not match {len(query)} queries × {len(gallery)} gallery items")
    step = chunk_size or _auto_chunk(dist.shape[1], DEFAULT_MEMORY_MB)
    chunks = ((dist[s : s + step], slice(s, s + step)) for s in range(0, dist.shape[0], step))
    return _rule_scores(chunks, query, gallery, rule).summary(ranks)


def rule_metrics_from_features(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    query: Labels,
    gallery: Labels,
    rule: str = "standard",
    ranks: Sequence[int] = RANKS,
    chunk_size: int | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    normalised: bool = False,
) -> dict[str, float]:
    """mAP and CMC of a rule from features ``[Nq, D]``/``[Ng, D]``, never holding the full matrix.

    ``normalised=True`` skips the L2 normalisation (the caller did it, e.g. once for all protocols).

    The distance is the squared Euclidean distance of L2-normalised features, ``2 − 2·cos``; the
    ranking uses the monotone key ``−cos`` itself, because rounding ``2 − 2·cos`` to float32 near 2
    (~2e-7 steps) creates exact ties that ``cos`` (~1e-9 steps near 0) does not have. The matmul
    runs one query chunk at a time on the features' device; the ranking runs on CPU.
    """
    _check_rule(rule)
    prepare = (lambda t: t.detach().to(torch.float32)) if normalised else normalise
    qf = prepare(_as_tensor(query_feats))
    gf = prepare(_as_tensor(gallery_feats)).to(qf.device)
    if qf.shape[0] != len(query) or gf.shape[0] != len(gallery) or qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"features {tuple(qf.shape)} / {tuple(gf.shape)} do not match {len(query)} queries / {len(gallery)} gallery items"
        )
    step = chunk_size or _auto_chunk(gf.shape[0], memory_mb)
    if qf.device.type == "cpu":  # numpy BLAS: no torch thread-pool hand-off per op
        q_neg = -qf.numpy()  # [Nq, D]: negating the (smaller) query side makes the key need no extra pass
        g_t = gf.numpy().T  # [D, Ng] view: BLAS reads the transpose in place (a transposed copy is slow)

        def chunks() -> Iterator[tuple[np.ndarray, slice]]:
            for s in range(0, q_neg.shape[0], step):
                yield q_neg[s : s + step] @ g_t, slice(s, s + step)  # [B, Ng] −cos

    else:
        q_neg_dev = qf.neg()

        def chunks() -> Iterator[tuple[np.ndarray, slice]]:
            for s in range(0, qf.shape[0], step):
                yield (q_neg_dev[s : s + step] @ gf.t()).cpu().numpy(), slice(s, s + step)

    return _rule_scores(chunks(), query, gallery, rule).summary(ranks)


def pairwise_distance(query_feats: np.ndarray | torch.Tensor, gallery_feats: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Full ``[Nq, Ng]`` squared Euclidean distance of L2-normalised features (``2 − 2·cos``)."""
    qf, gf = normalise(_as_tensor(query_feats)), normalise(_as_tensor(gallery_feats))
    return (qf @ gf.to(qf.device).t()).mul_(-2.0).add_(2.0)


def normalise(feats: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows as float32 (same device); raises ValueError on non-finite features."""
    feats = feats.detach().to(torch.float32)
    if feats.dim() != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {tuple(feats.shape)}")
    if feats.device.type == "cpu":  # numpy: a torch CPU op pays a thread-pool hand-off each
        array = feats.numpy()
        norms = np.sqrt(np.einsum("ij,ij->i", array, array))[:, None]  # NaN/Inf in a row → NaN/Inf norm
        if not np.isfinite(norms).all():
            if not np.isfinite(array).all():
                raise ValueError("features contain NaN or Inf")
            norms = np.linalg.norm(array.astype(np.float64), axis=1, keepdims=True)  # float32 overflow
        return torch.from_numpy((array / np.maximum(norms, 1e-12)).astype(np.float32, copy=False))
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("features contain NaN or Inf")
    return torch.nn.functional.normalize(feats, p=2, dim=1)


# --------------------------------------------------------------------------------------------
# internals


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown matching rule '{rule}'; expected one of {', '.join(RULES)}")


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x)
    return x if x.dtype != np.float16 else x.astype(np.float32)


def _auto_chunk(n_gallery: int, memory_mb: int) -> int:
    return max(1, int(memory_mb * 2**20 // (_BYTES_PER_ELEMENT * max(1, n_gallery))))


class _Scores:
    """Accumulates per-query AP and first-hit positions over chunks."""

    def __init__(self) -> None:
        self.ap: list[np.ndarray] = []
        self.first: list[np.ndarray] = []
        self.n_skipped = 0

    def add(self, ap: np.ndarray, first: np.ndarray, has_match: np.ndarray) -> None:
        self.ap.append(ap[has_match])
        self.first.append(first[has_match])
        self.n_skipped += int((~has_match).sum())

    def summary(self, ranks: Sequence[int]) -> dict[str, float]:
        ap = np.concatenate(self.ap) if self.ap else np.zeros(0)
        first = np.concatenate(self.first) if self.first else np.zeros(0, dtype=np.int64)
        out: dict[str, float] = {}
        if len(ap) == 0:
            logger.warning("no query has a valid match (%d skipped); metrics are NaN", self.n_skipped)
            out["mAP"] = math.nan
            out.update({f"rank{k}": math.nan for k in ranks})
        else:
            out["mAP"] = float(ap.mean() * 100.0)
            out.update({f"rank{k}": float((first < k).mean() * 100.0) for k in ranks})
        out["n_queries"] = int(len(ap))
        out["n_skipped"] = int(self.n_skipped)
        return out


class _GalleryGroups:
    """Gallery columns grouped by pid (ascending column order inside a group)."""

    def __init__(self, gallery: Labels) -> None:
        self.order = np.argsort(gallery.pids, kind="stable")
        self.uniq, self.start, self.count = np.unique(
            gallery.pids[self.order], return_index=True, return_counts=True
        )

    def candidates(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Same-pid gallery columns of each query ``[B, M]`` (padded with 0) and their validity."""
        if len(self.uniq) == 0:
            return np.zeros((len(q_pids), 0), np.int64), np.zeros((len(q_pids), 0), bool)
        pos = np.minimum(np.searchsorted(self.uniq, q_pids), len(self.uniq) - 1)
        found = self.uniq[pos] == q_pids
        count = np.where(found, self.count[pos], 0)
        start = np.where(found, self.start[pos], 0)
        slot = np.arange(int(count.max()) if len(count) else 0)
        valid = slot[None, :] < count[:, None]
        cand = self.order[np.where(valid, start[:, None] + slot[None, :], 0)]
        return np.where(valid, cand, 0), valid


def _rule_scores(chunks: Iterator[tuple[np.ndarray, slice]], query: Labels, gallery: Labels, rule: str) -> _Scores:
    groups = _GalleryGroups(gallery)
    scores = _Scores()
    for dist, rows in chunks:
        q = query.subset(np.arange(len(query))[rows])
        cand, valid = groups.candidates(q.pids)
        good = valid & (gallery.camids[cand] != q.camids[:, None])
        if rule == "cc":
            good &= gallery.clothes[cand] != q.clothes[:, None]
        elif rule == "sc":
            good &= gallery.clothes[cand] == q.clothes[:, None]
        scores.add(*_chunk_scores(dist, cand, valid, good))
    return scores


def _candidates_from_masks(special: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack the columns where ``special`` (junk or good) holds into ``[B, M]`` (ascending columns)."""
    rows, cols = np.nonzero(special)  # row-major: columns ascend within a row
    counts = special.sum(1)
    width = int(counts.max()) if counts.size else 0
    starts = np.cumsum(counts) - counts
    slot = np.arange(rows.size) - starts[rows]
    shape = (special.shape[0], width)
    cand, valid, cand_good = np.zeros(shape, np.int64), np.zeros(shape, bool), np.zeros(shape, bool)
    cand[rows, slot] = cols
    valid[rows, slot] = True
    cand_good[rows, slot] = good[rows, cols]
    return cand, valid, cand_good


def _chunk_scores(
    dist: np.ndarray, cand: np.ndarray, valid: np.ndarray, cand_good: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_block_scores` of a query chunk, in cache-sized row blocks spread over a thread pool.

    numpy releases the GIL in the heavy steps (sort, gathers, the binary search), so blocks run
    in parallel, and blocks outnumber threads so that on a shared machine a thread scheduled late
    does not hold the others up. A single block (small inputs) runs on the calling thread. The
    pool is process-wide (:func:`_pool`) so that its threads keep their sort buffers between calls.
    """
    n_rows = dist.shape[0]
    rows_per_block = max(1, _BLOCK_BYTES // max(1, dist.itemsize * dist.shape[1]))
    n_blocks = max(1, -(-n_rows // rows_per_block))
    if n_blocks == 1:
        return _block_scores(dist, cand, valid, cand_good)
    n_threads = min(torch.get_num_threads(), n_blocks)
    n_blocks = min(n_rows, -(-n_blocks // n_threads) * n_threads)  # equal shares: no thread idles at the end
    bounds = np.linspace(0, n_rows, n_blocks + 1).astype(int).tolist()
    blocks = [slice(bounds[i], bounds[i + 1]) for i in range(n_blocks)]

    def score(b: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _block_scores(dist[b], cand[b], valid[b], cand_good[b])

    if n_threads == 1:
        parts = [score(b) for b in blocks]
    else:
        parts = list(_pool(n_threads).map(score, blocks))
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_SCRATCH = threading.local()


def _new_lock_after_fork() -> None:
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()  # another thread may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


def _pool(n_threads: int) -> ThreadPoolExecutor:
    """A process-wide pool per thread count: its threads (and their sort buffers) outlive a call.

    Keyed by process id as well: a forked child inherits the pool object but not its threads, so
    it must not reuse it (its tasks would never run).
    """
    key = (os.getpid(), n_threads)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(n_threads, thread_name_prefix="maskcl-rank")
        return _POOLS[key]


def _sorted_rows(dist: np.ndarray) -> np.ndarray:
    """Each row of ``dist [B, Ng]`` sorted, in this thread's scratch buffer (valid until its next call).

    Reusing one buffer per thread avoids fresh memory per block: on the development VM a first
    touch costs ~4 µs per 4 KB page, i.e. ~2 ms per 2 MB block, paid again in every early call.
    """
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.dtype != dist.dtype or buf.size < dist.size:
        buf = _SCRATCH.buf = np.empty(dist.size, dtype=dist.dtype)
    out = buf[: dist.size].reshape(dist.shape)
    np.copyto(out, dist)
    out.sort(axis=1)
    return out


def _block_scores(
    dist: np.ndarray, cand: np.ndarray, valid: np.ndarray, cand_good: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP ``[B]`` (float64), first-hit position ``[B]`` and has-match ``[B]`` of a block of queries.

    ``dist: [B, Ng]``; ``cand: [B, M]`` gallery columns that are junk or good for the row, in
    ascending column order, padded (``valid`` False); ``cand_good: [B, M]`` which of them are good.
    Every other column is a kept non-match. The order is (distance, gallery index): an item is
    ranked before candidate ``c`` of distance ``v`` if its distance is ``< v``, or ``== v`` and its
    column is lower. Only the good items' positions are computed: a good item's position in the
    junk-free ranking is ``#items before it − #junk items before it``, and the junk items before it
    are the candidates before it that are not good. The small ``[B, M]`` work runs in numpy: on a
    busy machine every torch op on CPU pays a thread-pool synchronisation that costs more than the
    op itself.
    """
    n_rows, n_gallery = dist.shape
    cand_good = cand_good & valid
    n_good = cand_good.sum(1)
    has_match = n_good > 0
    ap = np.zeros(n_rows, dtype=np.float64)
    first = np.full(n_rows, n_gallery, dtype=np.int64)
    if n_rows == 0:
        return ap, first, has_match
    if not has_match.all():  # a row without a good item needs no ranking (it is skipped)
        idle = dist[~has_match]
        if idle.size and not (np.isfinite(idle.min()) and np.isfinite(idle.max())):
            raise ValueError("distance matrix contains NaN or Inf")
        rows = np.flatnonzero(has_match)
        if rows.size:
            ap[rows], first[rows], _ = _block_scores(dist[rows], cand[rows], valid[rows], cand_good[rows])
        return ap, first, has_match

    sorted_rows = _sorted_rows(dist)  # [B, Ng] values (SIMD sort): the one O(Ng log Ng) step; NaN sorts last
    if not (np.isfinite(sorted_rows[:, 0]).all() and np.isfinite(sorted_rows[:, -1]).all()):
        raise ValueError("distance matrix contains NaN or Inf")
    # goods in (row, distance, column) order, flat [G]: row, slot among the row's candidates, value
    row, slot, value, column = _ordered_goods(dist, cand, valid, cand_good)
    bounds = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(n_good, out=bounds[1:])
    hits = np.arange(1, row.size + 1) - bounds[row]  # 1-based index among the row's goods

    before = _count_below(sorted_rows, row, value)  # items strictly closer than each good item
    after = np.minimum(before + 1, n_gallery - 1)
    tied = (before + 1 < n_gallery) & (sorted_rows.ravel().take(after + row * n_gallery) == value)  # value occurs twice
    if tied.any():
        before[tied] += _equal_before(dist, row[tied], column[tied], value[tied])

    position = before - (slot - (hits - 1))  # 0-based position in the junk-free ranking
    ap[:] = np.bincount(row, weights=hits / (position + 1.0), minlength=n_rows) / n_good
    first[:] = position[bounds[:-1]]
    return ap, first, has_match


def _count_below(sorted_rows: np.ndarray, row: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``[G]`` int64: how many items of ``sorted_rows[row[g]]`` are ``< value[g]``, all at once.

    A branchless binary search (Shar's) run as ~log2(Ng) whole-array numpy steps instead of one
    ``searchsorted`` call per row: ~2× less CPU and no per-row Python, so the thread pool's
    blocks do not queue for the GIL. Each value must occur in its row (a good item's own
    distance), so the count is at most ``Ng − 1`` and every probe stays inside the row.
    """
    n_gallery = sorted_rows.shape[1]
    flat = sorted_rows.ravel()
    index_type = np.int32 if flat.size < 2**31 else np.int64
    base = row.astype(index_type) * index_type(n_gallery)
    top = 1 << (n_gallery.bit_length() - 1)  # the largest power of two ≤ Ng
    # first probe at top − 1; if it is below the value, the count lies in [Ng − top, Ng − 1]
    cur = base + (flat.take(base + (top - 1)) < value) * index_type(n_gallery - top)
    step = top >> 1
    while step:
        cur += (flat.take(cur + (step - 1)) < value) * index_type(step)
        step >>= 1
    return (cur - base).astype(np.int64)


_PAD_KEY = np.iinfo(np.int64).max - 1  # even: reads as "not good"; above every finite float32 key


def _ordered_goods(
    dist: np.ndarray, cand: np.ndarray, valid: np.ndarray, cand_good: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order each row's candidates by (distance, column); return the good ones flat ``[G]``.

    Returns ``row``, ``slot`` (index among the row's ordered candidates, so ``slot − #goods
    before`` is the number of junk items ranked before it), ``value`` (its distance) and
    ``column``, row-major and ascending within a row. float32 (the usual case) packs each
    candidate into one int64 key ``(order-preserving int32 of the distance, column, good bit)``
    and sorts the keys (SIMD integer sort); other dtypes take a stable argsort of the values.
    """
    n_rows, n_gallery = dist.shape
    row_base = np.arange(n_rows)[:, None]
    d_cand = dist.ravel().take(cand + row_base * n_gallery)  # [B, M]
    if dist.dtype == np.float32 and n_gallery < 2**31:
        d_cand += np.float32(0.0)  # -0.0 → +0.0: equal values must get equal keys
        bits = d_cand.view(np.int32)
        key = (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64)  # float order → int order
        key <<= 32
        key |= cand << 1
        key |= cand_good
        key[~valid] = _PAD_KEY
        key.sort(axis=1)
        flat = np.flatnonzero((key & 1) == 1)  # (1-D nonzero + divmod is ~3× faster than 2-D nonzero)
        row, slot = np.divmod(flat, key.shape[1])
        good_keys = key.ravel().take(flat)
        column = (good_keys >> 1) & 0x7FFFFFFF
        high = (good_keys >> 32).astype(np.int32)
        value = (high ^ ((high >> 31) & np.int32(0x7FFFFFFF))).view(np.float32)  # the key's inverse
        return row, slot, value, column
    if d_cand.dtype.kind == "f":
        d_cand[~valid] = np.inf
    else:
        d_cand[~valid] = np.iinfo(d_cand.dtype).max if d_cand.dtype.kind in "iu" else d_cand.max(initial=0)
    order = np.argsort(d_cand, axis=1, kind="stable")  # candidates ascend by column, padding is last
    flat = np.flatnonzero(np.take_along_axis(cand_good, order, 1))
    row, slot = np.divmod(flat, order.shape[1])
    picked = order.ravel().take(flat) + row * order.shape[1]
    return row, slot, d_cand.ravel().take(picked), cand.ravel().take(picked)


def _equal_before(dist: np.ndarray, row: np.ndarray, column: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``[T]``: for tied good items, the items of equal distance at a lower column of their row.

    float32 distances tie on large galleries (``2 − 2·cos`` rounds to ~2e-7 near 2), so ties are
    resolved exactly here by counting equal values left of the item's column in its row.
    Typically a good item in a few rows ties (fewer still when ranking by ``−cos``, see
    :func:`rule_metrics_from_features`); degenerate inputs (e.g. identical features) tie
    everywhere and are scanned as ``[≤B, Ng]`` blocks instead of one call per item.
    """
    n_rows = dist.shape[0]
    if row.size <= 4 * n_rows:
        return np.array(
            [np.count_nonzero(dist[r, :c] == v) for r, c, v in zip(row.tolist(), column.tolist(), value.tolist())],
            dtype=np.int64,
        )
    extra = np.empty(row.size, dtype=np.int64)
    columns = np.arange(dist.shape[1])
    for s in range(0, row.size, max(1, n_rows)):
        r, c, v = row[s : s + n_rows], column[s : s + n_rows], value[s : s + n_rows]
        extra[s : s + n_rows] = ((dist[r] == v[:, None]) & (columns[None, :] < c[:, None])).sum(1)
    return extra
