"""Sampler composition and camera preference, transforms pairing, the training dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskcl.data.dataset import TrainPairs, mask_paths
from maskcl.data.records import Record
from maskcl.data.sampler import PKCameraSampler
from maskcl.data.transforms import PairedTrainTransform, eval_transform, train_transform


def test_companions_come_from_other_cameras_when_there_are_any() -> None:
    cams = [0, 0, 1, 1, 2]
    for seed in range(20):
        sampler = PKCameraSampler([0] * 5, cams, 4, 4, torch.Generator().manual_seed(seed))
        anchor, *companions = sampler.one_pass()
        assert len(companions) == 3
        assert all(cams[i] != cams[anchor] for i in companions)


def test_without_replacement_when_enough_other_camera_images() -> None:
    cams = [0, 1, 1, 1, 1, 1]
    for seed in range(10):
        sampler = PKCameraSampler([0] * 6, cams, 4, 4, torch.Generator().manual_seed(seed))
        anchor, *companions = sampler.one_pass()
        if cams[anchor] == 0:  # five other-camera images ≥ K: no repeats
            assert len(set(companions)) == 3


def test_same_camera_identity_uses_its_other_images() -> None:
    sampler = PKCameraSampler([0, 0], [3, 3], 4, 4, torch.Generator().manual_seed(0))
    anchor, *companions = sampler.one_pass()
    assert companions == [1 - anchor] * 3  # fewer than K: drawn with replacement


def test_singletons_contribute_their_anchor_alone_and_passes_chain() -> None:
    labels = [0, 0, 0, 0, 1, 2]
    cams = [0, 1, 0, 1, 0, 0]
    sampler = PKCameraSampler(labels, cams, 4, 30, torch.Generator().manual_seed(1))
    assert len(sampler.one_pass()) == 4 + 1 + 1
    out = list(sampler)
    assert len(out) == 30 == len(sampler)
    assert set(out) <= set(range(6)) and {4, 5} <= set(out)


def test_sampler_is_reproducible_from_its_generator() -> None:
    labels, cams = [0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 0, 1, 1, 0, 0, 1]
    a = list(PKCameraSampler(labels, cams, 4, 40, torch.Generator().manual_seed(7)))
    b = list(PKCameraSampler(labels, cams, 4, 40, torch.Generator().manual_seed(7)))
    c = list(PKCameraSampler(labels, cams, 4, 40, torch.Generator().manual_seed(8)))
    assert a == b and a != c


def _grey_pattern(h: int = 64, w: int = 32) -> Image.Image:
    """An asymmetric grey image (R = G = B), so a flip or a shifted crop changes it."""
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    ramp[: h // 3] = 255 - ramp[: h // 3]
    return Image.fromarray(np.stack([ramp] * 3, axis=2))


def test_paired_transform_shares_flip_crop_and_erasing() -> None:
    paired = PairedTrainTransform(64, 32)
    image = _grey_pattern()
    for seed in range(10):
        torch.manual_seed(seed)
        img_t, mask_t = paired(image, image)
        assert img_t.shape == mask_t.shape == (3, 64, 32)
        assert torch.allclose(img_t, mask_t, atol=1e-6)


def test_unpaired_transforms_draw_independently() -> None:
    rgb, mask = train_transform(64, 32), train_transform(64, 32, grey=True)
    image = _grey_pattern()
    differ = 0
    for seed in range(10):
        torch.manual_seed(seed)
        differ += not torch.allclose(rgb(image), mask(image), atol=1e-6)
    assert differ > 0


def test_mask_transform_is_three_channel_grey() -> None:
    colour = Image.fromarray(np.dstack([np.full((64, 32), v, np.uint8) for v in (200, 50, 10)]))
    out = eval_transform(64, 32, grey=True)(colour)
    assert out.shape == (3, 64, 32)
    unnorm = out * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    assert torch.allclose(unnorm[0], unnorm[1], atol=1e-5) and torch.allclose(unnorm[1], unnorm[2], atol=1e-5)


def _tree(tmp_path: Path) -> tuple[list[Record], Path, Path]:
    root, mask_root = tmp_path / "data", tmp_path / "masks"
    records = []
    for i in range(3):
        path = root / "train" / f"00{i}_0_c01_000000.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 32, 3), 60 * i, np.uint8)).save(path)
        records.append(Record(path, i, i, 0))
    return records, root, mask_root


def test_train_pairs_yield_image_mask_label_index(tmp_path: Path) -> None:
    records, root, mask_root = _tree(tmp_path)
    paths = mask_paths(records, root, mask_root)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 32), 255, np.uint8), "L").save(p)
    tf = eval_transform(32, 16)
    pairs = TrainPairs([r.path for r in records], [5, 6, 7], tf, paths, eval_transform(32, 16, grey=True))
    image, mask, label, index = pairs[2]
    assert image.shape == mask.shape == (3, 32, 16) and (label, index) == (7, 2)
    rgb_only = TrainPairs([r.path for r in records], [5, 6, 7], tf)
    assert rgb_only[0][1].numel() == 0
