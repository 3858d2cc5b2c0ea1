"""Make one mask per image: from SCHP run here, or from pre-computed SCHP parsing PNGs.

Sources (``masks.source``):

* ``schp``: run SCHP (:mod:`maskcl.masks.schp`) with an official checkpoint, batched on the device
  chosen once; optionally keep the raw parsing PNGs (SCHP's own format) beside the masks' tree.
* ``import``: a folder of SCHP parsing PNGs mirroring the image tree (``parsing_dir/<rel>.png``).
* ``ground_truth``: the same import path, fed by the synthetic generator's ``parsing/`` folder
  (``<out>/parsing/<split>/<stem>.png`` mirrors ``<out>/LTCC_ReID/<split>/<stem>.png``).

Each mask lands at :func:`~maskcl.data.records.mask_path_for` (the one path rule) and is written
atomically (temp file in the same folder, then ``os.replace``), so a kill leaves either no mask or
a whole one, and a re-run skips what exists (resume). Stale temp files from a killed run are
removed when the next run visits their folder.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from maskcl.data.records import Record, mask_path_for
from maskcl.errors import ConfigError, DatasetError, MaskError, MaskclError, where
from maskcl.masks.labels import MASK_MODES, get_label_set, kept_ids, parsing_to_mask

if TYPE_CHECKING:  # pragma: no cover
    from maskcl.config import Config
    from maskcl.masks.schp import SCHPParser

log = logging.getLogger(__name__)

SOURCES = ("ground_truth", "import", "schp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TMP_SUFFIX = ".maskcl-tmp"  # temp files of an unfinished write: `.<name>.<random>.maskcl-tmp`
SHOW = 5  # how many offending files an error or summary names


@dataclass
class MaskSummary:
    """What a generation run did; ``failures`` holds ``(image, reason)`` for each failed image."""

    made: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    stale_removed: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def __str__(self) -> str:
        text = (
            f"masks: made {self.made}, skipped {self.skipped} (already there), "
            f"failed {self.failed} in {self.seconds:.1f} s"
        )
        if self.failures:
            shown = "; ".join(f"{path}: {reason}" for path, reason in self.failures[:SHOW])
            more = f" (+{self.failed - SHOW} more)" if self.failed > SHOW else ""
            text += f"; first failures: {shown}{more}"
        return text


def _first(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOW])
    return shown + (f", … (+{len(paths) - SHOW} more)" if len(paths) > SHOW else "")


# --------------------------------------------------------------------------------------------
# atomic PNG writes


def _save_png(image: Image.Image, fileobj) -> None:
    """Encode ``image`` as PNG into ``fileobj`` (a seam: tests make it fail or stall midway)."""
    image.save(fileobj, format="PNG")


def write_png_atomic(image: Image.Image, path: Path) -> None:
    """Write ``image`` to ``path`` so that ``path`` is never seen half-written.

    The PNG goes to a temp file in the same folder (same file system, so ``os.replace`` is an
    atomic rename), which is removed if encoding fails. A SIGKILL can leave the temp file, never a
    truncated ``path``; :func:`remove_stale_temps` cleans such leftovers.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX, delete=False)
    tmp = Path(handle.name)
    try:
        with handle:
            _save_png(image, handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(folders: Iterable[Path]) -> int:
    """Delete temp files a killed run left in ``folders``; returns how many were removed."""
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and entry.is_file():
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


# --------------------------------------------------------------------------------------------
# reading


def read_parsing(path: Path) -> np.ndarray:
    """A parsing PNG's class ids ``[H, W]`` uint8 (never its palette colours).

    ``np.array(Image.open(p))`` of a mode-"P" or "L" PNG is the pixel values = class ids;
    ``convert('L'/'RGB')`` would return palette colours instead (datasets.md §9).
    """
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise MaskError(
                f"parsing PNG {where(path)} is mode {image.mode!r}; expected a class-id PNG (mode 'P' or 'L', "
                "as SCHP writes), not a colour rendering"
            )
        return np.array(image, dtype=np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    """An image as ``[H, W, 3]`` uint8 RGB (what the training pipeline reads, so sizes agree)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.size


def list_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursive, sorted): the fallback when no loader is used."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def parsing_path_for(image: Path, dataset_root: Path, parsing_dir: Path) -> Path:
    """Where a pre-computed parsing PNG of ``image`` lives: the same rule as the masks' tree."""
    return mask_path_for(image, dataset_root, parsing_dir)


# --------------------------------------------------------------------------------------------
# generation


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _progress(total: int, progress: bool, desc: str):
    from tqdm import tqdm

    # disable=None hides the bar when stderr is not a terminal (DVC logs); False hides it always
    disable = None if progress else True
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=disable, dynamic_ncols=True)


def generate_masks(
    image_paths: Sequence[str | Path],
    dataset_root: str | Path,
    mask_root: str | Path,
    *,
    source: str = "import",
    mode: str = "silhouette",
    label_set: str = "lip",
    parsing_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    flip: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    atr_bag: bool = True,
    drop_accessories: bool = False,
    parsing_out: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
    parser: "SCHPParser | None" = None,
    force: bool = False,
    strict: bool = True,
    progress: bool = True,
) -> MaskSummary:
    """Write a mask for every image at ``mask_path_for(image, dataset_root, mask_root)``.

    Args:
        image_paths: images under ``dataset_root`` (any depth; the tree is mirrored).
        source: ``import`` / ``ground_truth`` (read ``parsing_dir``) or ``schp`` (run the network).
        mode: ``silhouette`` | ``no_clothes`` | ``parsing_grey`` (see :mod:`maskcl.masks.labels`).
        label_set: label ids of the parsing maps (``lip``, ``atr``, ``pascal``).
        parsing_dir: import sources: folder of class-id PNGs mirroring the image tree.
        checkpoint: ``schp``: official SCHP ``.pth`` (class count must match ``label_set``).
        flip, batch_size, device, input_size: SCHP inference settings (device resolved once).
        atr_bag, drop_accessories: mask-rule options (:func:`~maskcl.masks.labels.parsing_to_mask`).
        parsing_out: ``schp``: also keep the raw parsing PNGs (SCHP format) in this mirrored tree.
        parser: ``schp``: a ready :class:`~maskcl.masks.schp.SCHPParser` instead of ``checkpoint``.
        force: remake masks that exist (otherwise they are skipped: resume).
        strict: raise :class:`MaskError` if any image failed (after writing all the others).

    Returns:
        The :class:`MaskSummary` (made / skipped / failures).

    Raises:
        MaskError: parsing PNGs missing (count + first few, before any work), an image under no
            ``dataset_root``, or (``strict``) any image that failed, e.g. a parsing PNG whose size
            differs from its image's.
        ConfigError / CheckpointError: bad settings or checkpoint.
    """
    started = time.perf_counter()
    if source not in SOURCES:
        raise ConfigError(f"masks.source is {source!r}; expected one of {', '.join(SOURCES)}")
    if mode not in MASK_MODES:
        raise ConfigError(f"masks.mode is {mode!r}; expected one of {', '.join(MASK_MODES)}")
    labels = get_label_set(label_set)
    if mode != "parsing_grey":
        kept_ids(mode, labels, atr_bag, drop_accessories)  # fail now (e.g. no_clothes on pascal), not per image
    dataset_root, mask_root = Path(dataset_root), Path(mask_root)
    for name, folder in (("mask_root", mask_root), ("parsing_out", parsing_out)):
        if folder and Path(folder).resolve() == dataset_root.resolve():
            # LTCC images are already .png: masks written there would overwrite them
            raise ConfigError(f"{name} {where(folder)} is the dataset root; expected a separate folder")
    images = [Path(p) for p in image_paths]
    relative: list[Path] = []  # mask_path_for(image, root, "") = the image's mirrored .png path
    outside: list[Path] = []
    for image in images:
        try:
            relative.append(mask_path_for(image, dataset_root, Path()))
        except ValueError:
            outside.append(image)
    if outside:
        raise MaskError(
            f"{len(outside)} image(s) are not under the dataset root {where(dataset_root)}: {_first(outside)}"
        )
    targets = [mask_root / rel for rel in relative]

    summary = MaskSummary()
    summary.stale_removed = remove_stale_temps(sorted({t.parent for t in targets}))
    if summary.stale_removed:
        log.info("removed %d unfinished temp file(s) left by an interrupted run", summary.stale_removed)
    todo = [(im, t, rel) for im, t, rel in zip(images, targets, relative) if force or not t.exists()]
    summary.skipped = len(images) - len(todo)
    if summary.skipped:
        log.info("%d mask(s) already exist under %s: skipped (use force to remake)", summary.skipped, mask_root)

    if source in ("import", "ground_truth"):
        if not parsing_dir:
            raise ConfigError(f"masks.source '{source}' needs masks.parsing_dir (a folder of SCHP parsing PNGs)")
        _import_parsing(
            todo, dataset_root, Path(parsing_dir), mode, labels.name, atr_bag, drop_accessories, strict, progress, summary
        )
    else:
        if parser is None:
            parser = _build_parser(checkpoint, labels.name, device, input_size, flip)
        _run_schp(todo, parser, mode, atr_bag, drop_accessories, batch_size, parsing_out, progress, summary)

    summary.seconds = time.perf_counter() - started
    log.info("%s", summary)
    if strict and summary.failures:
        raise MaskError(str(summary))
    return summary


def _mask_image(parsing: np.ndarray, mode: str, label_set: str, atr_bag: bool, drop_accessories: bool) -> Image.Image:
    return Image.fromarray(parsing_to_mask(parsing, mode, label_set, atr_bag, drop_accessories))  # mode "L"


def _import_parsing(
    todo: list[tuple[Path, Path, Path]],
    dataset_root: Path,
    parsing_dir: Path,
    mode: str,
    label_set: str,
    atr_bag: bool,
    drop_accessories: bool,
    strict: bool,
    progress: bool,
    summary: MaskSummary,
) -> None:
    if not parsing_dir.is_dir():
        raise MaskError(
            f"parsing folder {where(parsing_dir)} does not exist; "
            f"expected SCHP parsing PNGs mirroring {where(dataset_root)}"
        )
    sources = [parsing_dir / rel for _, _, rel in todo]  # == parsing_path_for(image, dataset_root, parsing_dir)
    missing = [p for p in sources if not p.is_file()]
    if missing:
        message = (
            f"{len(missing)} of {len(todo)} parsing PNG(s) missing under {where(parsing_dir)} "
            f"(expected <parsing_dir>/<image path relative to the dataset root>.png): {_first(missing)}"
        )
        if strict:
            raise MaskError(message)
        log.warning("%s", message)
    with _progress(len(todo), progress, "masks (import)") as bar:
        for (image, target, _), parsing_png in zip(todo, sources):
            try:
                parsing = read_parsing(parsing_png)
                width, height = image_size(image)
                if parsing.shape != (height, width):
                    raise MaskError(
                        f"parsing PNG {where(parsing_png)} is {parsing.shape[1]}×{parsing.shape[0]}; "
                        f"expected its image's size {width}×{height}"
                    )
                write_png_atomic(_mask_image(parsing, mode, label_set, atr_bag, drop_accessories), target)
                summary.made += 1
            except (MaskclError, OSError, ValueError) as exc:
                summary.failures.append((image, str(exc)))
            bar.update(1)


def _build_parser(
    checkpoint: str | Path | None, label_set: str, device: str, input_size: tuple[int, int] | None, flip: bool
) -> "SCHPParser":
    from maskcl.masks.schp import SCHPParser, load_schp_checkpoint, resolve_device

    if not checkpoint:
        raise ConfigError("masks.source 'schp' needs masks.checkpoint (an official SCHP .pth)")
    labels = get_label_set(label_set)
    chosen = resolve_device(device)
    model = load_schp_checkpoint(checkpoint, num_classes=labels.num_classes, device=chosen)
    size = input_size or labels.input_size
    log.info("SCHP %s (%d classes) on %s, input %s, flip=%s", checkpoint, labels.num_classes, chosen, size, flip)
    return SCHPParser(model, labels, chosen, input_size=input_size, flip=flip)


def _run_schp(
    todo: list[tuple[Path, Path, Path]],
    parser: "SCHPParser",
    mode: str,
    atr_bag: bool,
    drop_accessories: bool,
    batch_size: int,
    parsing_out: str | Path | None,
    progress: bool,
    summary: MaskSummary,
) -> None:
    from maskcl.masks.schp import parsing_image

    labels = parser.labels
    with _progress(len(todo), progress, "masks (SCHP)") as bar:
        for batch in _batches(todo, batch_size):
            loaded: list[tuple[Path, Path, Path, np.ndarray]] = []
            for image, target, rel in batch:
                try:
                    loaded.append((image, target, rel, read_rgb(image)))
                except (OSError, ValueError) as exc:
                    summary.failures.append((image, f"unreadable image: {exc}"))
                    bar.update(1)
            if not loaded:
                continue
            parsings = parser.parse([rgb for *_, rgb in loaded])
            for (image, target, rel, _), parsing in zip(loaded, parsings):
                try:
                    if parsing_out:
                        write_png_atomic(parsing_image(parsing, labels.num_classes), Path(parsing_out) / rel)
                    write_png_atomic(_mask_image(parsing, mode, labels.name, atr_bag, drop_accessories), target)
                    summary.made += 1
                except (MaskclError, OSError, ValueError) as exc:
                    summary.failures.append((image, str(exc)))
                bar.update(1)


# --------------------------------------------------------------------------------------------
# the pipeline's two entry points


def check_masks(
    records: Sequence[Record], dataset_root: str | Path, mask_root: str | Path, check_size: bool = False
) -> list[Path]:
    """The mask path of every record, after checking they all exist (what training calls first).

    Args:
        check_size: also compare each mask's size with its image's (reads both headers).

    Returns:
        Mask paths aligned with ``records``.

    Raises:
        MaskError: how many masks are missing (or of the wrong size), the first few, and the
            command that makes them.
    """
    paths = [mask_path_for(r.path, Path(dataset_root), Path(mask_root)) for r in records]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MaskError(
            f"{len(missing)} of {len(paths)} mask(s) missing under {where(mask_root)}: {_first(missing)}; "
            "make them with `maskcl masks` (or `dvc repro masks`)"
        )
    if check_size:
        from maskcl.data.integrity import inspect_image, unreadable_message

        wrong: list[str] = []
        bad: list[tuple[Path, str]] = []
        sizes: list[tuple[int, int] | None] = []
        for path in paths:  # header and end marker of each mask: a mask cut short fails here
            mask_size, problem = inspect_image(path)
            sizes.append(mask_size)
            if problem is not None:
                bad.append((path, problem))
        if bad:
            raise MaskError(unreadable_message(
                bad, len(paths), "mask", f"masks under {where(mask_root)}", "a whole PNG mask",
                "regenerate the masks with `maskcl masks --force`",
            ))
        for record, path, mask_size in zip(records, paths, sizes):
            try:
                size = image_size(record.path)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DatasetError(
                    f"image {where(record.path)} cannot be read ({type(exc).__name__}: {exc}); expected a readable "
                    "image file (PNG/JPEG) — replace or remove it"
                ) from None
            if mask_size != size:
                wrong.append(
                    f"{where(path)} is {mask_size[0]}x{mask_size[1]} "
                    f"but image {where(record.path)} is {size[0]}x{size[1]}"
                )
        if wrong:
            shown = "; ".join(wrong[:SHOW]) + (f"; … (+{len(wrong) - SHOW} more)" if len(wrong) > SHOW else "")
            raise MaskError(
                f"{len(wrong)} mask(s) under {where(mask_root)} differ in size from their images (WxH): {shown}; "
                "expected each mask the size of its image — remake them with `maskcl masks --force`"
            )
    return paths


def dataset_images(name: str, root: str | Path, splits: Sequence[str] = ("train", "query", "gallery")) -> list[Path]:
    """The image paths of ``splits`` of a dataset, via its loader (validates the dataset's layout).

    Falls back to every image file under ``root`` when the loaders are not installed.
    """
    try:
        from maskcl.data import build_dataset  # type: ignore[attr-defined]
    except ImportError:
        log.warning("maskcl.data.build_dataset unavailable: taking every image file under %s", root)
        return list_images(Path(root))
    data = build_dataset(name, root)
    unknown = [s for s in splits if s not in ("train", "query", "gallery")]
    if unknown:
        raise ConfigError(f"unknown split(s) {unknown}; expected train, query, gallery")
    seen: dict[Path, None] = {}
    for split in splits:
        for record in getattr(data, split):
            seen.setdefault(Path(record.path), None)
    return list(seen)


def default_parsing_dir(cfg: "Config") -> Path:
    """``masks.parsing_dir``, or for ``ground_truth`` the synthetic generator's ``<out>/parsing``."""
    if cfg.masks.parsing_dir:
        return Path(cfg.masks.parsing_dir)
    if cfg.masks.source == "ground_truth":
        return Path(cfg.dataset.root).parent / "parsing"
    raise ConfigError(f"masks.source '{cfg.masks.source}' needs masks.parsing_dir")


def generate_for_config(
    cfg: "Config",
    *,
    force: bool = False,
    splits: Sequence[str] = ("train", "query", "gallery"),
    atr_bag: bool = True,
    drop_accessories: bool = False,
    parsing_out: str | Path | None = None,
    progress: bool = True,
) -> MaskSummary:
    """Masks for the configured dataset (``cfg.dataset.{name,root,mask_root}``, ``cfg.masks.*``)."""
    m = cfg.masks
    # cheap checks before indexing the dataset (which can take a while on a real one)
    parsing_dir = default_parsing_dir(cfg) if m.source != "schp" else None
    if parsing_dir is not None and not parsing_dir.is_dir():
        raise MaskError(
            f"parsing folder {where(parsing_dir)} does not exist; expected SCHP parsing PNGs mirroring "
            f"{where(cfg.dataset.root)} (masks.parsing_dir)"
        )
    if m.source == "schp" and (not m.checkpoint or not Path(m.checkpoint).is_file()):
        raise ConfigError(
            f"masks.source 'schp' needs masks.checkpoint, an official SCHP .pth; found {m.checkpoint!r} "
            "(LIP: exp-schp-201908261155-lip.pth)"
        )
    images = dataset_images(cfg.dataset.name, cfg.dataset.root, splits)
    if not images:
        raise MaskError(f"no images found for dataset '{cfg.dataset.name}' under {where(cfg.dataset.root)}")
    return generate_masks(
        images,
        cfg.dataset.root,
        cfg.dataset.mask_root,
        source=m.source,
        mode=m.mode,
        label_set=m.label_set,
        parsing_dir=parsing_dir,
        checkpoint=m.checkpoint or None,
        flip=m.flip,
        batch_size=m.batch_size,
        device=m.device,
        atr_bag=atr_bag,
        drop_accessories=drop_accessories,
        parsing_out=parsing_out,
        force=force,
        progress=progress,
    )
