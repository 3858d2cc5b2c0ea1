"""SCHP human parsing (Li et al., "Self-Correction for Human Parsing") for inference, in plain PyTorch.

The released checkpoints are AugmentCE2P networks: a ResNet-101 with a deep 3-conv stem, a PSP
context encoder, an edge branch, a parsing decoder and a fusion head (spelled ``fushion`` in the
checkpoints; reference/datasets.md §9). The official code builds them with InPlaceABN, whose CUDA/C++
extension is JIT-compiled at import and no longer compiles against current torch. At inference an
InPlaceABN layer is a batch norm whose scale is ``|weight| + eps`` followed by its activation, so
:class:`ABN` reproduces exactly that as a ``BatchNorm2d`` subclass (key paths stay ``x.weight``, and
a state dict without ``num_batches_tracked`` still loads strictly). A plain BatchNorm2d (no
activation, or signed weights) gives wrong parses (SCHP issues #44, #88; inplace_abn #114).

Preprocessing follows SCHP's ``simple_extractor``: BGR channel order, the whole image is the person
box, its aspect ratio is widened to the input's and it is affine-warped to the input size with black
borders; the fused logits are upsampled bilinearly (align_corners=True) to the input size,
warped back to the image's size and arg-maxed. The warps use ``grid_sample`` instead of OpenCV, so
a batch runs on the chosen device; OpenCV's fixed-point bilinear weights make a few boundary pixels
differ (to be measured against ``demo/demo_lip.png`` with the official weights, §12).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from maskcl.errors import CheckpointError, ConfigError, where
from maskcl.masks.labels import LABEL_SETS, LabelSet, get_label_set, label_sets_with_classes, voc_palette

# ImageNet statistics in BGR order, as SCHP normalises (the network was trained on BGR input)
BGR_MEAN = (0.406, 0.456, 0.485)
BGR_STD = (0.225, 0.224, 0.229)


class ABN(nn.BatchNorm2d):
    """InPlaceABN at inference: ``act((x - mean) / sqrt(var + eps) · (|w| + eps) + b)``.

    ``activation`` is ``"none"`` (backbone BNs) or ``"leaky_relu"`` with slope 0.01 (head ABNs).
    In training mode it normalises with batch statistics like BatchNorm2d (the scale is still
    ``|w| + eps``); this project never trains SCHP.
    """

    def __init__(self, num_features: int, activation: str = "leaky_relu", slope: float = 0.01) -> None:
        super().__init__(num_features, eps=1e-5, momentum=0.1, affine=True)
        if activation not in ("none", "leaky_relu"):
            raise ValueError(f"ABN activation {activation!r}; expected 'none' or 'leaky_relu'")
        self.activation = activation
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        use_batch_stats = self.training
        y = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight.abs() + self.eps,
            self.bias,
            use_batch_stats,
            self.momentum,
            self.eps,
        )
        if self.activation == "leaky_relu":
            y = F.leaky_relu(y, self.slope, inplace=True)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


def _bn(channels: int) -> ABN:
    """A backbone batch norm: InPlaceABN built with ``activation='none'``."""
    return ABN(channels, activation="none")


def _conv_abn(c_in: int, c_out: int, kernel: int = 1, padding: int = 0) -> nn.Sequential:
    """``conv (no bias) → ABN(leaky_relu)``, the head's building block (keys ``.0`` / ``.1``)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False), ABN(c_out))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1×1 → 3×3 with stride/dilation → 1×1, expansion 4)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = _bn(width * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class PSPContext(nn.Module):
    """Pyramid pooling over bins 1, 2, 3, 6 → 512 channels each, concatenated with the input."""

    def __init__(self, c_in: int = 2048, c_out: int = 512, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(c_in, c_out, 1, bias=False), ABN(c_out)) for b in bins
        )
        self.bottleneck = _conv_abn(c_in + len(bins) * c_out, c_out, kernel=3, padding=1)

    def forward(self, feats: Tensor) -> Tensor:
        size = feats.shape[-2:]
        pooled = [F.interpolate(stage(feats), size=size, mode="bilinear", align_corners=True) for stage in self.stages]
        return self.bottleneck(torch.cat([*pooled, feats], dim=1))


class EdgeBranch(nn.Module):
    """Edge logits from layer1/2/3; its 3×256 features feed the fusion head."""

    def __init__(self, c_ins: Sequence[int] = (256, 512, 1024), mid: int = 256, out: int = 2) -> None:
        super().__init__()
        self.conv1 = _conv_abn(c_ins[0], mid)
        self.conv2 = _conv_abn(c_ins[1], mid)
        self.conv3 = _conv_abn(c_ins[2], mid)
        self.conv4 = nn.Conv2d(mid, out, 3, padding=1, bias=True)  # shared by the three levels
        self.conv5 = nn.Conv2d(out * 3, out, 1, bias=True)

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor]:
        size = x1.shape[-2:]
        feats = [self.conv1(x1), self.conv2(x2), self.conv3(x3)]
        edges = [self.conv4(f) for f in feats]
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True)  # noqa: E731
        feats = [feats[0]] + [up(f) for f in feats[1:]]
        edges = [edges[0]] + [up(e) for e in edges[1:]]
        return self.conv5(torch.cat(edges, dim=1)), torch.cat(feats, dim=1)


class Decoder(nn.Module):
    """Parsing decoder: context (1/8) upsampled onto layer1 (1/4) features."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = _conv_abn(512, 256)
        self.conv2 = _conv_abn(256, 48)
        self.conv3 = nn.Sequential(
            nn.Conv2d(304, 256, 1, bias=False), ABN(256), nn.Conv2d(256, 256, 1, bias=False), ABN(256)
        )
        self.conv4 = nn.Conv2d(256, num_classes, 1, bias=True)

    def forward(self, context: Tensor, low: Tensor) -> tuple[Tensor, Tensor]:
        top = F.interpolate(self.conv1(context), size=low.shape[-2:], mode="bilinear", align_corners=True)
        feats = self.conv3(torch.cat([top, self.conv2(low)], dim=1))
        return self.conv4(feats), feats


@dataclass
class SCHPOutput:
    """Logits at 1/4 of the input resolution: ``parsing``/``fusion`` ``[B, C, h, w]``, ``edge`` ``[B, 2, h, w]``."""

    parsing: Tensor
    fusion: Tensor
    edge: Tensor


class AugmentCE2P(nn.Module):
    """SCHP's network; module names match the released checkpoints after ``module.`` is stripped."""

    def __init__(self, num_classes: int = 20) -> None:
        super().__init__()
        self.num_classes = num_classes
        # deep stem: three 3×3 convs (the first strided) instead of one 7×7
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = _bn(128)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._c = 128
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, stride=2)
        self.layer3 = self._layer(256, 23, stride=2)
        self.layer4 = self._layer(512, 3, dilation=2)  # output stride 16, dilated last stage
        self.context_encoding = PSPContext(2048, 512)
        self.edge = EdgeBranch()
        self.decoder = Decoder(num_classes)
        self.fushion = nn.Sequential(  # sic: the checkpoints' spelling
            nn.Conv2d(1024, 256, 1, bias=False), ABN(256), nn.Dropout2d(0.1), nn.Conv2d(256, num_classes, 1, bias=True)
        )

    def _layer(self, width: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._c != width * 4:
            downsample = nn.Sequential(nn.Conv2d(self._c, width * 4, 1, stride=stride, bias=False), _bn(width * 4))
        layers = [Bottleneck(self._c, width, stride, dilation, downsample)]
        self._c = width * 4
        layers += [Bottleneck(self._c, width, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> SCHPOutput:
        """``x``: ``[B, 3, H, W]`` BGR-normalised → logits at ``[H/4, W/4]`` (rounded up)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x1 = self.layer1(self.maxpool(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        context = self.context_encoding(x4)
        parsing, parsing_feats = self.decoder(context, x1)
        edge, edge_feats = self.edge(x1, x2, x3)
        fusion = self.fushion(torch.cat([parsing_feats, edge_feats], dim=1))
        return SCHPOutput(parsing=parsing, fusion=fusion, edge=edge)


# --------------------------------------------------------------------------------------------
# checkpoints


def official_state_dict(model: AugmentCE2P) -> dict[str, Tensor]:
    """``model``'s weights in the released layout: ``module.``-prefixed, no ``num_batches_tracked``.

    Used to write test fixtures and to export; the released files hold ``{'state_dict': this}``.
    """
    state = model.state_dict()
    return {f"module.{k}": v.detach().clone() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _describe_classes(num_classes: int) -> str:
    names = label_sets_with_classes(num_classes)
    label = f"label set {'/'.join(names)}" if names else "no SCHP label set"
    return f"{num_classes} classes ({label})"


def load_schp_checkpoint(
    path: str | Path, num_classes: int | None = None, device: str | torch.device = "cpu"
) -> AugmentCE2P:
    """Build :class:`AugmentCE2P` from an official SCHP ``.pth`` and put it in eval mode on ``device``.

    Loads with ``weights_only=True`` (no code runs from the file), takes ``['state_dict']`` (a bare
    tensor dict is accepted too), strips ``module.`` and loads strictly.

    Args:
        num_classes: expected head size (20 LIP, 18 ATR, 7 Pascal); ``None`` reads it from the file.

    Raises:
        CheckpointError: missing/unreadable file, not a state dict, class count other than
            ``num_classes``, or keys/shapes that are not AugmentCE2P's (lists missing and unexpected keys).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"SCHP checkpoint {where(path)} does not exist; "
            "expected an official SCHP .pth (LIP: exp-schp-201908261155-lip.pth)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"SCHP checkpoint {where(path)} cannot be loaded with weights_only=True: {first}; "
            "expected a torch file holding {'state_dict': {name: tensor}}"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"SCHP checkpoint {where(path)}: found {found}; expected a dict with a 'state_dict' of tensors"
        )
    # a fresh dict: no `_metadata`, so BatchNorm fills in the absent num_batches_tracked
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    head = state.get("fushion.3.weight")
    found_classes = int(head.shape[0]) if head is not None and head.ndim == 4 else None
    if num_classes is not None and found_classes is not None and found_classes != num_classes:
        raise CheckpointError(
            f"SCHP checkpoint {where(path)} has {_describe_classes(found_classes)} in 'fushion.3.weight'; "
            f"expected {_describe_classes(num_classes)}: use the matching checkpoint or masks.label_set"
        )
    classes = found_classes if found_classes is not None else (num_classes or 20)
    with torch.device("meta"):  # shapes only: no time spent on a random init the file overwrites
        model = AugmentCE2P(classes)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        raise CheckpointError(
            f"SCHP checkpoint {where(path)} is not an AugmentCE2P ({_describe_classes(classes)}) state dict: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k, found, want = wrong[0]
        raise CheckpointError(
            f"SCHP checkpoint {where(path)}: {len(wrong)} tensor(s) of the wrong shape, first '{k}' "
            f"{list(found)} (expected {list(want)}) for {_describe_classes(classes)}"
        )
    # assign=True adopts the file's tensors (no second copy of ~250 MB); BatchNorm creates the
    # absent num_batches_tracked counters itself
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # pragma: no cover - guarded by the key checks above
        raise CheckpointError(f"SCHP checkpoint {where(path)}: tensors not filled: {leftover[:5]}")
    return model.requires_grad_(False).to(device).eval()


# --------------------------------------------------------------------------------------------
# inference


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"masks.device is {name!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class _Warp:
    """The similarity SCHP uses: input pixel ``u = k·(x − c) + d`` (per axis), image pixel ``x``.

    The person box is ``[0, 0, w−1, h−1]``: centre ``c = ((w−1)/2, (h−1)/2)``, box widened to the
    input's aspect ratio, ``k = (W_in − 1) / box_w``, ``d = ((W_in − 1)/2, (H_in − 1)/2)``.
    """

    k: float
    cx: float
    cy: float
    dx: float
    dy: float

    @classmethod
    def for_image(cls, width: int, height: int, input_hw: tuple[int, int]) -> "_Warp":
        in_h, in_w = input_hw
        aspect = in_w / in_h
        box_w, box_h = float(width - 1), float(height - 1)
        if box_w > aspect * box_h:
            box_h = box_w / aspect
        elif box_w < aspect * box_h:
            box_w = box_h * aspect
        box_w = max(box_w, 1e-6)  # a 1×1 image
        return cls(k=(in_w - 1) / box_w, cx=(width - 1) / 2, cy=(height - 1) / 2, dx=(in_w - 1) / 2, dy=(in_h - 1) / 2)


def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = torch.arange(height, device=device, dtype=torch.float32)
    xs = torch.arange(width, device=device, dtype=torch.float32)
    return torch.meshgrid(ys, xs, indexing="ij")


def _sample(src: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Bilinear read of ``src`` ``[1, C, H, W]`` at pixel coordinates ``xs, ys`` ``[h, w]``; outside → 0.

    Pixel centres sit at integers (OpenCV's convention), hence ``align_corners=True`` normalisation.
    """
    h, w = src.shape[-2:]
    grid = torch.stack([2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(src, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)


class SCHPParser:
    """Batched SCHP inference: RGB uint8 images of any size → parsing maps of the same size.

    Args:
        model: an :class:`AugmentCE2P` (eval mode), e.g. from :func:`load_schp_checkpoint`.
        label_set: its labels (flip pairs, default input size); must match ``model.num_classes``.
        device: where the network runs, chosen once (``auto`` picks CUDA when present).
        input_size: ``(H, W)`` network input; default the label set's (473² LIP, 512² ATR/Pascal).
        flip: SCHP's flip test: average the logits with those of the mirrored image, left/right
            labels swapped.
    """

    def __init__(
        self,
        model: AugmentCE2P,
        label_set: str | LabelSet = "lip",
        device: str | torch.device = "auto",
        input_size: tuple[int, int] | None = None,
        flip: bool = False,
    ) -> None:
        self.labels = get_label_set(label_set)
        if model.num_classes != self.labels.num_classes:
            raise CheckpointError(
                f"SCHP network has {_describe_classes(model.num_classes)}; label set '{self.labels.name}' "
                f"expects {self.labels.num_classes}"
            )
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.input_size = tuple(input_size or self.labels.input_size)
        self.flip = flip
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(BGR_STD, device=self.device).view(1, 3, 1, 1)
        perm = list(range(self.labels.num_classes))
        for left, right in self.labels.flip_pairs:
            perm[left], perm[right] = right, left
        self._flip_perm = torch.tensor(perm, device=self.device)

    def _warp_in(self, image: np.ndarray) -> tuple[Tensor, _Warp]:
        """``image`` ``[h, w, 3]`` RGB uint8 → network input ``[3, H_in, W_in]`` in BGR 0..1."""
        h, w = image.shape[:2]
        warp = _Warp.for_image(w, h, self.input_size)
        src = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).to(self.device)  # RGB → BGR
        src = src.permute(2, 0, 1)[None].float()
        vs, us = _pixel_grid(*self.input_size, self.device)
        warped = _sample(src, (us - warp.dx) / warp.k + warp.cx, (vs - warp.dy) / warp.k + warp.cy)
        # OpenCV writes the warp into uint8: round and clip before ToTensor's /255
        return warped[0].round().clamp_(0, 255) / 255.0, warp

    @torch.inference_mode()
    def logits(self, images: Sequence[np.ndarray]) -> list[Tensor]:
        """Per image, fused logits at the image's size: ``[C, h, w]`` float on :attr:`device`."""
        if not images:
            return []
        warped, warps = zip(*(self._warp_in(im) for im in images))
        batch = (torch.stack(warped) - self._mean) / self._std  # [B, 3, H_in, W_in]
        if self.flip:
            out = self.model(torch.cat([batch, batch.flip(-1)])).fusion
            plain, mirrored = out.chunk(2)
            fused = (plain + mirrored[:, self._flip_perm].flip(-1)) * 0.5
        else:
            fused = self.model(batch).fusion  # [B, C, H_in/4, W_in/4]
        fused = F.interpolate(fused.float(), size=self.input_size, mode="bilinear", align_corners=True)
        results = []
        for i, (image, warp) in enumerate(zip(images, warps)):
            h, w = image.shape[:2]
            ys, xs = _pixel_grid(h, w, self.device)
            us, vs = warp.k * (xs - warp.cx) + warp.dx, warp.k * (ys - warp.cy) + warp.dy  # input-pixel coords
            results.append(_sample(fused[i : i + 1], us, vs)[0])
        return results

    def parse(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 images ``[h, w, 3]`` → parsing maps ``[h, w]`` uint8 of class ids."""
        return [lg.argmax(0).to(torch.uint8).cpu().numpy() for lg in self.logits(images)]


def parsing_image(parsing: np.ndarray, num_classes: int) -> Image.Image:
    """A parsing map as SCHP saves it: mode "P", pixel = class id, VOC palette of ``num_classes``."""
    image = Image.fromarray(np.asarray(parsing, dtype=np.uint8))  # mode "L" …
    image.putpalette(voc_palette(num_classes))  # … becomes "P" with the palette, as SCHP saves it
    return image


def label_set_for_checkpoint_classes(num_classes: int) -> LabelSet:
    names = label_sets_with_classes(num_classes)
    if not names:
        raise CheckpointError(f"no SCHP label set has {num_classes} classes; expected 20 (lip), 18 (atr) or 7 (pascal)")
    return LABEL_SETS[names[0]]
