"""Shared pieces of the dataset loaders: folder checks, listing, grammars, count checks.

Every loader follows the same conventions (datasets.md §0): files are listed sorted (never in
``os.listdir`` order), the *basename* is parsed (never the full path, whose folder names can
match a regex first), clothes keys are ``(pid, outfit)`` tuples, camera ids start at 0, train
pids are relabelled explicitly and query/gallery share one clothes map. Errors name the file,
what was found and what was expected; real-count mismatches are warnings (a partial download
must be visible, not fatal) that are also kept in ``DatasetSplits.meta["warnings"]``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from maskcl.data.records import Record
from maskcl.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# files that operating systems drop into image folders; counted and skipped with a warning
OS_JUNK = frozenset({"Thumbs.db", ".DS_Store", "desktop.ini"})


@dataclass
class LoadLog:
    """Collects a loader's warnings: logged at once, and kept for ``DatasetSplits.meta``."""

    dataset: str
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        text = f"{self.dataset}: {message}"
        logger.warning(text)
        self.warnings.append(text)


@dataclass(frozen=True)
class Grammar:
    """A file-name grammar: a regex over the basename plus an example for error messages."""

    pattern: re.Pattern[str]
    example: str

    def match(self, path: Path, dataset: str) -> re.Match[str]:
        found = self.pattern.fullmatch(path.name)
        if found is None:
            raise DatasetError(self.describe_error(path, dataset))
        return found

    def describe_error(self, path: Path, dataset: str) -> str:
        return (
            f"{dataset}: file name '{path.name}' (in '{path.parent}') does not follow the dataset's "
            f"naming: expected the regex {self.pattern.pattern!r}, e.g. '{self.example}'"
        )


def resolve_root(root: Path, dataset: str, required: Sequence[str], aliases: Sequence[str], layout: str) -> Path:
    """The folder holding ``required``: ``root`` itself or ``root/<alias>`` (the name the authors ship).

    A missing folder is an error that lists every expected entry and the expected layout.
    """
    root = Path(root)
    for candidate in (root, *(root / alias for alias in aliases)):
        if candidate.is_dir() and all((candidate / entry).exists() for entry in required):
            return candidate
    if not root.exists():
        raise DatasetError(f"{dataset}: dataset folder '{root}' does not exist; expected {layout}")
    missing = [entry for entry in required if not (root / entry).exists()]
    raise DatasetError(
        f"{dataset}: '{root}' is missing {', '.join(repr(m) for m in missing)}; expected {layout} "
        f"(also looked inside {', '.join(repr(a) for a in aliases)})"
    )


def list_images(
    folder: Path,
    log: LoadLog,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    known_odd: Iterable[str] = (),
) -> list[Path]:
    """Sorted image files of ``folder`` (not recursive).

    Operating-system junk (``Thumbs.db``, ``.DS_Store``, hidden files) and the names in
    ``known_odd`` are counted and skipped with a warning; any other non-image entry (a stray
    file or folder) is an error naming it.
    """
    if not folder.is_dir():
        raise DatasetError(f"{log.dataset}: expected a folder of images at '{folder}', found none")
    skip = OS_JUNK | frozenset(known_odd)
    images: list[Path] = []
    skipped: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name in skip or path.name.startswith("."):
            skipped.append(path.name)
        elif path.is_file() and path.suffix.lower() in suffixes:
            images.append(path)
        else:
            kind = "folder" if path.is_dir() else "file"
            raise DatasetError(
                f"{log.dataset}: '{path}' is a {kind} that is not an image; expected only "
                f"{'/'.join(suffixes)} files in '{folder}'"
            )
    if skipped:
        log.warn(f"skipped {len(skipped)} non-image file(s) in '{folder}' ({', '.join(sorted(set(skipped)))})")
    return images


def list_subdirs(folder: Path, log: LoadLog, what: str) -> list[Path]:
    """Sorted sub-folders of ``folder``; OS junk is skipped, a stray file is an error."""
    if not folder.is_dir():
        raise DatasetError(f"{log.dataset}: expected a folder at '{folder}', found none")
    out: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name in OS_JUNK or path.name.startswith("."):
            continue
        if not path.is_dir():
            raise DatasetError(f"{log.dataset}: '{path}' is a file; expected only {what} folders in '{folder}'")
        out.append(path)
    return out


def require_nonempty(records: Sequence[Record], log: LoadLog, split: str, where: Path) -> None:
    if not records:
        raise DatasetError(f"{log.dataset}: the {split} split is empty: no images found in '{where}'")


def check_query_in_gallery(query: Sequence[Record], gallery: Sequence[Record], log: LoadLog, gallery_dir: Path) -> None:
    """Every query pid must have gallery images; otherwise the query can never be matched."""
    gallery_pids = {r.pid for r in gallery}
    orphans = [r for r in query if r.pid not in gallery_pids]
    if orphans:
        n_pids = len({r.pid for r in orphans})
        raise DatasetError(
            f"{log.dataset}: query image '{orphans[0].path}' has pid {orphans[0].pid}, which has no image in "
            f"the gallery '{gallery_dir}' ({len(orphans)} query image(s) of {n_pids} pid(s) are affected); "
            "expected every query pid to appear in the gallery"
        )


def check_count(log: LoadLog, split: str, records: Sequence[Record], expected: tuple[int, int] | None) -> None:
    """Warn (never fail) when ``(ids, images)`` differ from the published numbers (datasets.md §1)."""
    if expected is None:
        return
    ids, images = len({r.pid for r in records}), len(records)
    if (ids, images) != expected:
        log.warn(
            f"{split}: found {ids} ids / {images} images, the release has {expected[0]} / {expected[1]} "
            f"({images - expected[1]:+d} images); a partial download or extra files?"
        )


def clothes_map(keys: Iterable[tuple[int, object]], offset: int = 0) -> dict[tuple[int, object], int]:
    """Index sorted ``(pid, outfit)`` tuple keys as ``offset, offset+1, …`` (never string keys)."""
    return {key: offset + index for index, key in enumerate(sorted(set(keys)))}


def summary(name: str, train: Sequence[Record], query: Sequence[Record], gallery: Sequence[Record]) -> None:
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        logger.info(
            "%s %-7s %5d ids %7d images %5d clothes", name, split, len({r.pid for r in records}),
            len(records), len({r.clothes_id for r in records}),
        )
