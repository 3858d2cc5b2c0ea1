"""Decoded images kept in memory for the length of a run, up to a byte budget.

A small training set is drawn many times per epoch and each draw used to decode its file again;
keeping the decoded image makes a draw cost its augmentation only. The pixels are those of
:func:`~maskcl.data.dataset.load_rgb` either way, so a run's result does not depend on the cache.
The budget bounds memory on a large set: images past it are decoded on every draw, as without a
cache. Warm it in the main process before any loader starts: worker processes inherit it (fork)
instead of each filling a copy that ends with the epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from PIL import Image

from maskcl.data.dataset import load_rgb
from maskcl.errors import DatasetError, MaskclError


class DecodedImages:
    """``load(path, what, error)`` with :func:`load_rgb`'s contract, remembering up to ``budget_mb``."""

    def __init__(self, budget_mb: int):
        if budget_mb < 0:
            raise ValueError(f"budget_mb must be >= 0, got {budget_mb}")
        self.budget = int(budget_mb) * 2**20
        self.used = 0
        self._images: dict[Path, Image.Image] = {}

    def __len__(self) -> int:
        return len(self._images)

    def load(self, path: Path, what: str = "image", error: type[MaskclError] = DatasetError) -> Image.Image:
        # the transforms never modify their input image, so the cached object is handed out as is
        image = self._images.get(path)
        if image is not None:
            return image
        image = load_rgb(path, what, error)
        size = image.width * image.height * len(image.getbands())
        if self.used + size <= self.budget:
            self._images[path] = image
            self.used += size
        return image

    def warm(self, paths: Iterable[Path], what: str = "image", error: type[MaskclError] = DatasetError) -> int:
        """Decode ``paths`` now (until the budget is full); returns how many images are held."""
        if self.budget == 0:
            return 0
        for path in paths:
            if self.used >= self.budget:
                break
            self.load(path, what, error)
        return len(self._images)
