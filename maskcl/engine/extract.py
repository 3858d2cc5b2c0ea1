"""Batched feature extraction under ``no_grad`` in eval mode (BN uses running statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from maskcl.data.dataset import ImageList, Loader, load_rgb


@torch.no_grad()
def extract_features(
    encode: Callable[[Tensor], Tensor],
    paths: Sequence[Path],
    transform: Callable,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    amp: bool = False,
    desc: str = "extract",
    progress: bool = True,
    load: Loader = load_rgb,
) -> Tensor:
    """``[N, D]`` float32 features of ``paths`` (in order) on ``device``.

    ``encode`` maps an image batch ``[B,3,H,W]`` to features ``[B,D]``; the caller puts its model
    in eval mode. The loader gets its own generator so extraction never consumes the global torch
    RNG (a resumed run must replay the same random stream as an uninterrupted one).
    ``progress=False`` hides the bar (the processes of a multi-process run other than rank 0).
    ``load`` reads a file (a run's :class:`~maskcl.data.image_cache.DecodedImages`).
    """
    loader = DataLoader(
        ImageList(paths, transform, load),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    chunks: list[Tensor] = []
    use_amp = amp and device.type == "cuda"
    for images, _ in tqdm(loader, desc=desc, leave=False, disable=None if progress else True):
        images = images.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            feats = encode(images)
        chunks.append(feats.float())
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks, dim=0)
