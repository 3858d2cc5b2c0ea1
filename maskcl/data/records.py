"""The one record shape every loader yields, and the one rule that finds an image's mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One image of a re-ID dataset.

    ``pid`` is the raw person id of the split (train pids are relabelled to 0..P-1 by
    :func:`relabel`, test pids never are). ``clothes_id`` is an integer index of the
    ``(pid, outfit)`` key, unique within the dataset. ``camid`` starts at 0.
    """

    path: Path
    pid: int
    clothes_id: int
    camid: int


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset as loaded from disk: its root, the three splits and what it knows about itself.

    ``protocols`` names the evaluation protocols (see ``maskcl.eval``) that apply to this
    dataset, default first. ``meta`` carries dataset-specific facts a protocol needs (e.g. the
    LTCC cloth-change test ids) as plain JSON-able values.
    """

    name: str
    root: Path
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    protocols: tuple[str, ...] = ("cc",)
    meta: dict = field(default_factory=dict)


def relabel(records: list[Record]) -> list[Record]:
    """Map train pids to 0..P-1 in sorted order of the raw pid (never listing order)."""
    mapping = {pid: index for index, pid in enumerate(sorted({r.pid for r in records}))}
    return [Record(r.path, mapping[r.pid], r.clothes_id, r.camid) for r in records]


def mask_path_for(image_path: Path, dataset_root: Path, mask_root: Path) -> Path:
    """The silhouette mask of ``image_path``: the image's path under ``mask_root``, as ``.png``.

    The mask tree mirrors the image tree (PRCC stems repeat across pid folders, so flattening
    would collide) and masks never sit next to the images (LTCC images are already ``.png``).
    """
    relative = Path(image_path).resolve().relative_to(Path(dataset_root).resolve())
    return Path(mask_root) / relative.with_suffix(".png")
