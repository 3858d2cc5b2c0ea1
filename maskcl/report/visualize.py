"""Retrieval pictures: a query, then its top-k gallery images framed green (same identity) or red.

Under each image: identity, camera and clothes ids, so a reader sees at a glance whether a hit
crossed a camera and a change of clothes. The default exclusion is the paper's clothes-changing
protocol (``cc``): with the standard rule the same person in the same clothes on another camera
fills the list, which shows clothes matching rather than re-identification.

The features come from a ``.npz`` in the format of :mod:`maskcl.eval.features`.

Ranking: squared Euclidean distance of L2-normalised features (= 2 − 2·cosine), the evaluator's
ranking. Gallery images excluded from a query's list follow the protocol rule: ``standard``
drops the query's identity seen by the query's camera; ``cc`` also drops the query's identity in
the query's clothes; ``none`` drops nothing. This module never imports the engine or torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from maskcl.eval.features import FORMAT, FeatureSet, Item, load_features, save_features  # noqa: F401  (re-exported)
from maskcl.report.records import ReportError

log = logging.getLogger(__name__)

EXCLUDE_RULES = ("standard", "cc", "none")
TILE_W, TILE_H = 64, 128
GREEN, RED, BLUE = "#1a9e3a", "#d62728", "#1f5fbf"


def distance_matrix(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of L2-normalised features: ``dist [Nq, Ng] = 2 − 2·q·gᵀ``."""
    q = query_feats / np.maximum(np.linalg.norm(query_feats, axis=1, keepdims=True), 1e-12)
    g = gallery_feats / np.maximum(np.linalg.norm(gallery_feats, axis=1, keepdims=True), 1e-12)
    return np.clip(2.0 - 2.0 * (q @ g.T), 0.0, 4.0)


def ranked_gallery(dist_row: np.ndarray, query: Item, gallery: Sequence[Item], topk: int, exclude: str) -> list[int]:
    """Indices of the ``topk`` nearest gallery items after the protocol's exclusions (stable order)."""
    if exclude not in EXCLUDE_RULES:
        raise ReportError(f"exclude rule '{exclude}', expected one of {EXCLUDE_RULES}")
    order = np.argsort(dist_row, kind="stable")
    kept = []
    for index in order:
        item = gallery[int(index)]
        same_pid = item.pid == query.pid
        if exclude != "none" and same_pid and item.camid == query.camid:
            continue
        if exclude == "cc" and same_pid and item.clothes_id == query.clothes_id:
            continue
        kept.append(int(index))
        if len(kept) == topk:
            break
    return kept


def _tile(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            tile = image.convert("RGB").resize((TILE_W, TILE_H))
            return np.asarray(tile)
    except (FileNotFoundError, OSError):
        log.warning("image '%s' not found or unreadable: drawn as a grey tile", path)
        return np.full((TILE_H, TILE_W, 3), 160, dtype=np.uint8)


def retrieval_figure(
    query: Sequence[Item],
    gallery: Sequence[Item],
    dist: np.ndarray,
    query_indices: Sequence[int],
    *,
    topk: int = 10,
    exclude: str = "cc",
):
    """The figure (a matplotlib ``Figure`` on an Agg canvas): one row per chosen query.

    Args:
        query, gallery: the items, in the row/column order of ``dist``.
        dist: ``[Nq, Ng]`` distances (smaller = more similar).
        query_indices: rows of ``dist`` to draw.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dist = np.asarray(dist)
    if dist.shape != (len(query), len(gallery)):
        raise ReportError(f"distance matrix shape {dist.shape}, expected ({len(query)}, {len(gallery)}) = (queries, gallery)")
    bad = [i for i in query_indices if not 0 <= i < len(query)]
    if bad:
        raise ReportError(f"query index/indices {bad} out of range 0..{len(query) - 1}")
    rows = len(query_indices)
    cols = min(topk, len(gallery)) + 1
    fig = Figure(figsize=(0.9 * cols + 0.3, 2.3 * rows + 0.35), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, qi in enumerate(query_indices):
        q = query[qi]
        ranked = ranked_gallery(dist[qi], q, gallery, topk, exclude)
        entries = [(q, BLUE, f"query {qi}\n{item_text(q)}")]
        for rank, gi in enumerate(ranked, start=1):
            g = gallery[gi]
            color = GREEN if g.pid == q.pid else RED
            entries.append((g, color, f"#{rank}\n{item_text(g)}"))
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(entries):
                ax.axis("off")
                continue
            item, color, text = entries[c]
            ax.imshow(_tile(item.path))
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4)
            ax.set_xlabel(text, fontsize=6.5, color=color if c else "black")
    return fig


def item_text(item: Item) -> str:
    """``id 3 · cam 2\nclothes 5``: identity, camera and clothes of an image."""
    return f"id {item.pid} · cam {item.camid}\nclothes {item.clothes_id}"


RULE_WORDS = {
    "cc": "clothes-changing protocol: same person in the same clothes or camera excluded",
    "standard": "standard protocol: same person and camera excluded",
    "none": "no exclusion",
}


def save_retrieval_figure(
    features: FeatureSet,
    query_indices: Sequence[int],
    out: str | Path,
    *,
    topk: int = 10,
    exclude: str = "cc",
) -> Path:
    """Rank the gallery for the chosen queries and write the picture to ``out`` (PNG)."""
    dist = distance_matrix(features.query_feats[list(query_indices)], features.gallery_feats)
    # retrieval_figure indexes dist by query row: give it the chosen rows only
    chosen = [features.query[i] for i in query_indices]
    fig = retrieval_figure(chosen, features.gallery, dist, list(range(len(chosen))), topk=topk, exclude=exclude)
    # label rows with the real query indices
    cols = min(topk, len(features.gallery)) + 1
    for r, qi in enumerate(query_indices):
        q = features.query[qi]
        fig.axes[r * cols].set_xlabel(f"query {qi}\n{item_text(q)}", fontsize=6.5)
    fig.suptitle(f"Top-{topk} retrieval ({RULE_WORDS[exclude]}); green = same identity, red = another", fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    log.info("wrote %s", out)
    return out


def choose_queries(spec: str, n_queries: int, seed: int = 0) -> list[int]:
    """``"5"`` → 5 seeded random distinct query indices; ``"3,17,42"`` → those indices."""
    spec = spec.strip()
    if "," in spec or spec.startswith("="):
        try:
            indices = [int(x) for x in spec.lstrip("=").split(",") if x.strip()]
        except ValueError:
            raise ReportError(f"--queries '{spec}': expected N or comma-separated query indices") from None
        bad = [i for i in indices if not 0 <= i < n_queries]
        if bad:
            raise ReportError(f"--queries: index/indices {bad} out of range 0..{n_queries - 1}")
        return indices
    try:
        count = int(spec)
    except ValueError:
        raise ReportError(f"--queries '{spec}': expected N or comma-separated query indices") from None
    if count < 1:
        raise ReportError(f"--queries {count}: expected at least 1")
    rng = np.random.default_rng(seed)
    count = min(count, n_queries)
    return sorted(int(i) for i in rng.choice(n_queries, size=count, replace=False))
