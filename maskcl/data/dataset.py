"""Torch datasets: training pairs (image + silhouette mask + pseudo-label) and plain image lists.

A mask is found by the one rule :func:`maskcl.data.records.mask_path_for` (mask_root mirrors the
image tree). It is read as RGB and made 3-channel grey by its transform, as the authors do, so a
0/255 silhouette stays binary and a parsing palette map becomes grey levels.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from maskcl.data.records import Record, mask_path_for
from maskcl.errors import DatasetError, MaskError, MaskclError


def load_rgb(path: Path, what: str = "image", error: type[MaskclError] = DatasetError) -> Image.Image:
    """Decode ``path`` as RGB; a truncated or non-image file is one ``error`` naming the file.

    ``convert`` forces the full decode, so a file cut short fails here (inside ``__getitem__``)
    rather than as a bare PIL traceback later.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError for some corrupt headers
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if issubclass(error, MaskError):  # a mask is made by this project: regenerate, not replace
            expected, fix = "a readable PNG mask", "regenerate the masks with `maskcl masks --force`"
        else:
            expected, fix = "a readable image file (PNG/JPEG)", "replace or remove it"
        raise error(f"{what} '{path}' cannot be read ({type(exc).__name__}: {reason}); expected {expected} — {fix}") from None


def mask_paths(records: Sequence[Record], dataset_root: Path, mask_root: Path) -> list[Path]:
    """The mask path of every record, in record order."""
    return [mask_path_for(r.path, dataset_root, mask_root) for r in records]


# how a dataset reads one file: load_rgb, or a DecodedImages.load (same pixels, decoded once)
Loader = Callable[..., Image.Image]


class ImageList(Dataset):
    """``(transform(image), index)`` for a list of image paths (feature extraction)."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], Tensor], load: Loader = load_rgb):
        self.paths = list(paths)
        self.transform = transform
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.load(self.paths[index])), index


@contextmanager
def seeded_augmentation(seed: int | None) -> Iterator[None]:
    """Run the block on torch's CPU RNG seeded with ``seed``, then restore the RNG as it was.

    The transforms draw from torch's global CPU RNG; seeding it per draw makes a draw's
    augmentation a function of its seed alone (not of the process or worker that loads it, nor of
    what that worker loaded before), and restoring it leaves the caller's stream untouched.
    Only the CPU generator is touched: ``torch.manual_seed`` would also reseed the CUDA
    generators that training draws from. ``seed=None`` runs the block on the RNG as it is.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class TrainPairs(Dataset):
    """``(image [3,H,W], mask [3,H,W] or empty, pseudo_label, index)`` per training image.

    ``index`` is the image's memory slot. ``mask_paths=None`` (RGB-only method) yields an empty
    mask tensor and reads no mask. ``paired`` (an image+mask transform) replaces the two
    independent transforms when given. The key is an index, or ``(index, seed)`` as
    :class:`~maskcl.data.sampler.GlobalBatchRows` yields it: the transforms then run under that
    seed (:func:`seeded_augmentation`). ``load`` reads a file (:data:`Loader`).
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        labels: Sequence[int],
        image_transform: Callable | None,
        mask_paths: Sequence[Path] | None = None,
        mask_transform: Callable | None = None,
        paired: Callable | None = None,
        load: Loader = load_rgb,
    ):
        if len(labels) != len(image_paths):
            raise ValueError(f"{len(labels)} labels for {len(image_paths)} images")
        if mask_paths is not None and len(mask_paths) != len(image_paths):
            raise ValueError(f"{len(mask_paths)} masks for {len(image_paths)} images")
        self.image_paths = list(image_paths)
        self.labels = [int(x) for x in labels]
        self.mask_paths = list(mask_paths) if mask_paths is not None else None
        self.image_transform = image_transform
        self.mask_transform = mask_transform
        self.paired = paired
        self.load = load

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.load(self.image_paths[index])
        if self.mask_paths is None:
            with seeded_augmentation(seed):
                image_t = self.image_transform(image)
            return image_t, torch.empty(0), self.labels[index], index
        mask = self.load(self.mask_paths[index], "mask", MaskError)
        with seeded_augmentation(seed):
            if self.paired is not None:
                image_t, mask_t = self.paired(image, mask)
            else:
                image_t, mask_t = self.image_transform(image), self.mask_transform(mask)
        return image_t, mask_t, self.labels[index], index
