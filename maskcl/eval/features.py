"""The saved-features file: what the evaluate step writes and ``maskcl visualize`` reads.

It lives in ``eval`` because both sides may import it: the engine writes it, the report reads it,
and neither imports the other.

Features file format (``.npz``, written by :func:`save_features` (``maskcl evaluate --features``, the DVC evaluate stage);
every array is plain numpy, so ``np.load`` needs no ``allow_pickle``)::

    query_feats     float32 [Nq, D]   features of the query images (L2-normalised or not)
    gallery_feats   float32 [Ng, D]
    query_paths     str     [Nq]      image paths (absolute, or relative to ``root``)
    gallery_paths   str     [Ng]
    query_pids      int64   [Nq]      identity labels
    gallery_pids    int64   [Ng]
    query_camids    int64   [Nq]
    gallery_camids  int64   [Ng]
    query_clothes   int64   [Nq]      clothes ids (dataset-wide; -1 when unknown)
    gallery_clothes int64   [Ng]
    root            str     []        optional: folder relative paths are resolved against
    format          str     []        "maskcl-features-v1"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maskcl.errors import FeaturesError

FORMAT = "maskcl-features-v1"


@dataclass(frozen=True)
class Item:
    """One image of the retrieval picture (what a ``maskcl.data.records.Record`` also carries)."""

    path: Path
    pid: int
    camid: int
    clothes_id: int


@dataclass(frozen=True)
class FeatureSet:
    query_feats: np.ndarray  # [Nq, D]
    gallery_feats: np.ndarray  # [Ng, D]
    query: list[Item]
    gallery: list[Item]


def save_features(
    path: str | Path,
    query_feats: Any,
    gallery_feats: Any,
    query_records: Sequence[Any],
    gallery_records: Sequence[Any],
    root: str | Path | None = None,
) -> Path:
    """Write the ``.npz`` above from features and records with ``path, pid, camid, clothes_id``.

    ``query_feats``/``gallery_feats`` may be numpy arrays or CPU tensors (``np.asarray`` is used).
    """
    query_feats = np.asarray(query_feats, dtype=np.float32)
    gallery_feats = np.asarray(gallery_feats, dtype=np.float32)
    if len(query_feats) != len(query_records) or len(gallery_feats) != len(gallery_records):
        raise FeaturesError(
            f"features file '{path}': {len(query_feats)} query features for {len(query_records)} records, "
            f"{len(gallery_feats)} gallery features for {len(gallery_records)} records (expected equal counts)"
        )
    root_text = "" if root is None else str(root)

    def rel(p: Any) -> str:
        p = Path(p)
        if root is not None:
            try:
                return str(p.relative_to(root))
            except ValueError:
                pass
        return str(p)

    arrays = {"query_feats": query_feats, "gallery_feats": gallery_feats}
    for prefix, records in (("query", query_records), ("gallery", gallery_records)):
        arrays[f"{prefix}_paths"] = np.array([rel(r.path) for r in records], dtype=str)
        arrays[f"{prefix}_pids"] = np.array([int(r.pid) for r in records], dtype=np.int64)
        arrays[f"{prefix}_camids"] = np.array([int(r.camid) for r in records], dtype=np.int64)
        arrays[f"{prefix}_clothes"] = np.array([int(getattr(r, "clothes_id", -1)) for r in records], dtype=np.int64)
    arrays["root"] = np.array(root_text)
    arrays["format"] = np.array(FORMAT)
    from maskcl.atomic import write_atomic

    # atomic (a full disk leaves no truncated .npz); a file handle keeps numpy from appending ".npz"
    return write_atomic(path, lambda handle: np.savez(handle, **arrays), "features file")


def load_features(path: str | Path, root: str | Path | None = None) -> FeatureSet:
    """Read a features ``.npz``; relative image paths resolve against ``root`` (or the file's own)."""
    path = Path(path)
    required = [f"{p}_{k}" for p in ("query", "gallery") for k in ("feats", "paths", "pids", "camids", "clothes")]
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FeaturesError(f"features file '{path}' does not exist") from None
    except (ValueError, OSError) as exc:
        raise FeaturesError(f"features file '{path}' is not a readable .npz: {exc}") from None
    with data:
        missing = [k for k in required if k not in data.files]
        if missing:
            raise FeaturesError(f"features file '{path}': missing array(s) {missing}; expected {required} (format {FORMAT})")
        stored_root = str(data["root"]) if "root" in data.files else ""
        base = Path(root) if root is not None else (Path(stored_root) if stored_root else path.parent)
        sets = {}
        for prefix in ("query", "gallery"):
            feats = np.asarray(data[f"{prefix}_feats"], dtype=np.float32)
            columns = [data[f"{prefix}_{k}"] for k in ("paths", "pids", "camids", "clothes")]
            if feats.ndim != 2 or any(len(c) != len(feats) for c in columns):
                raise FeaturesError(
                    f"features file '{path}': {prefix} arrays disagree: feats {feats.shape}, "
                    f"paths/pids/camids/clothes lengths {[len(c) for c in columns]} (expected [N, D] and N each)"
                )
            items = [
                Item(path=base / str(p) if not Path(str(p)).is_absolute() else Path(str(p)), pid=int(pid), camid=int(cam), clothes_id=int(clo))
                for p, pid, cam, clo in zip(*columns)
            ]
            sets[prefix] = (feats, items)
    if sets["query"][0].shape[1] != sets["gallery"][0].shape[1]:
        raise FeaturesError(f"features file '{path}': query dim {sets['query'][0].shape[1]} != gallery dim {sets['gallery'][0].shape[1]}")
    return FeatureSet(sets["query"][0], sets["gallery"][0], sets["query"][1], sets["gallery"][1])
