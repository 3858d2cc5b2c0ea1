"""Image and mask transforms (method.md "Data per training sample"; paper.md §3).

- RGB train: resize H×W (bicubic) → flip 0.5 → pad 10 → random crop H×W → tensor → ImageNet
  normalisation → random erasing p=0.5 (area 2–40 %, aspect 0.3–3.3; the box is filled with the
  constants (0.485, 0.456, 0.406) written into the *normalised* tensor, as the authors' erasing
  does; torchvision draws the aspect ratio log-uniformly, theirs uniformly: a negligible change).
- mask train: the same with Grayscale(3) after the resize.
- test: resize → tensor → normalise (masks for the mask memory go through this too, without
  Grayscale, unless ``train.mask_memory_grey``: the authors' quirk, method.md).

By default the mask is augmented *independently* of its image (the authors' quirk: separate
random flip/crop/erasing). :class:`PairedTrainTransform` draws one flip, one crop and one erasing
box for both (``train.paired_aug``). All randomness comes from torch's RNG, so a seeded run with
``workers=0`` (or seeded workers) repeats exactly.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as TF

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD = 10
BICUBIC = T.InterpolationMode.BICUBIC


def train_transform(height: int, width: int, grey: bool = False) -> T.Compose:
    """The authors' training pipeline; ``grey=True`` is the mask variant (Grayscale(3))."""
    steps: list = [T.Resize((height, width), interpolation=BICUBIC)]
    if grey:
        steps.append(T.Grayscale(num_output_channels=3))
    steps += [
        T.RandomHorizontalFlip(p=0.5),
        T.Pad(PAD),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
        T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=list(MEAN)),
    ]
    return T.Compose(steps)


def eval_transform(height: int, width: int, grey: bool = False) -> T.Compose:
    """Resize → tensor → normalise (``grey`` adds Grayscale(3) after the resize)."""
    steps: list = [T.Resize((height, width), interpolation=BICUBIC)]
    if grey:
        steps.append(T.Grayscale(num_output_channels=3))
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


class PairedTrainTransform:
    """Image + mask with one shared flip, crop and erasing box (``train.paired_aug``)."""

    def __init__(self, height: int, width: int):
        self.size = (height, width)
        self.erase = T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=list(MEAN))
        self.fill = torch.tensor(MEAN).view(3, 1, 1)
        self.normalize = T.Normalize(MEAN, STD)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Tensor, Tensor]:
        h, w = self.size
        image = TF.resize(image, [h, w], interpolation=BICUBIC)
        mask = TF.to_grayscale(TF.resize(mask, [h, w], interpolation=BICUBIC), num_output_channels=3)
        if torch.rand(1).item() < 0.5:
            image, mask = TF.hflip(image), TF.hflip(mask)
        image, mask = TF.pad(image, PAD), TF.pad(mask, PAD)
        top, left, ch, cw = T.RandomCrop.get_params(image, (h, w))
        image, mask = TF.crop(image, top, left, ch, cw), TF.crop(mask, top, left, ch, cw)
        image = self.normalize(TF.to_tensor(image))
        mask = self.normalize(TF.to_tensor(mask))
        if torch.rand(1).item() < self.erase.p:
            i, j, eh, ew, _ = T.RandomErasing.get_params(image, self.erase.scale, self.erase.ratio, value=list(MEAN))
            image = TF.erase(image, i, j, eh, ew, self.fill)
            mask = TF.erase(mask, i, j, eh, ew, self.fill)
        return image, mask
