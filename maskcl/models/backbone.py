"""ResNet re-ID branch: torchvision ResNet trunk, last stride 1, GAP → BN-neck → L2 norm.

One branch produces the feature ``f`` used everywhere (memories, test-time retrieval) and, when
asked, the projection ``g`` the cross-view losses train (method.md "Network"; paper.md §2.1):

- ``f = L2norm(BN(pooled))`` with the BN bias frozen (the BNNeck of the authors' ``resnet.py``);
- ``g = L2norm(BN(Linear_D→D(pooled)))``, applied to the raw pooled vector, not to ``f``.

Weights: ``pretrained="imagenet"`` loads torchvision's IMAGENET1K_V1 weights (the authors'
``pretrained=True``) through the torch hub cache, ``"none"`` keeps torchvision's random init, and
any other value is a local file: a torchvision ResNet state dict, or a maskcl run's ``last.pt``
(its RGB branch's trunk). A missing file or an offline download is a
:class:`~maskcl.errors.CheckpointError`, never a silent random init.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from maskcl.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

ARCHS = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights", 512),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights", 512),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights", 2048),
}


def feature_dim(arch: str) -> int:
    """Width of the pooled feature of ``arch`` (512 for ResNet-18/34, 2048 for ResNet-50)."""
    return _arch(arch)[2]


def _arch(arch: str) -> tuple:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ConfigError(f"model.arch is {arch!r}; expected one of {', '.join(ARCHS)}") from None


def _imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """IMAGENET1K_V1 weights via the torchvision API (hub cache first, else a download)."""
    weights = getattr(torchvision.models, _arch(arch)[1]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, OSError, RuntimeError: all mean "not available here"
        raise CheckpointError(
            f"ImageNet weights for {arch} are not in the torch hub cache '{cached}' and could not be "
            f"downloaded from {weights.url} ({type(exc).__name__}: {exc}); put the file at that path "
            f"(or set TORCH_HOME), or set model.pretrained to a local state-dict path, or to 'none'"
        ) from None


def _file_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(
            f"model.pretrained '{path}' is not a file; expected 'imagenet', 'none' or a path to a "
            "torchvision ResNet state dict or a maskcl run's last.pt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"'{path}' could not be loaded safely (weights_only=True): {exc}") from None
    for key in ("state_dict", "model"):  # common wrappers around a plain state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}; expected a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(RUN_TRUNK) for k in state):
        return _trunk_as_torchvision(state)
    return state


# A maskcl run's last.pt: its RGB branch's trunk (nn.Sequential) as torchvision ResNet keys, so a
# model trained on one dataset (or a disjoint synthetic population) can start a run on another,
# as ImageNet weights do. Both branches start from it, as both start from ImageNet in the paper.
RUN_TRUNK = "rgb.trunk."
TRUNK_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _trunk_as_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(RUN_TRUNK):
            index, _, rest = key.removeprefix(RUN_TRUNK).partition(".")
            out[f"{TRUNK_NAMES[int(index)]}.{rest}"] = value
    return out


def build_trunk(arch: str, pretrained: str = "imagenet", last_stride: int = 1) -> nn.Sequential:
    """The ResNet trunk (conv1 … layer4) without pooling/fc, with layer4's stride set."""
    factory, _, _ = _arch(arch)
    resnet = factory(weights=None)
    if pretrained == "imagenet":
        state = _imagenet_state_dict(arch)
    elif pretrained in ("none", ""):
        state = None
    else:
        state = _file_state_dict(Path(pretrained))
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = resnet.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"model.pretrained '{pretrained}' does not fit torchvision {arch}: "
                f"missing {missing[:5]} ({len(missing)}), unexpected {result.unexpected_keys[:5]} "
                f"({len(result.unexpected_keys)})"
            )
        log.info("loaded %s weights from %s", arch, pretrained)
    # last stride 1 doubles layer4's resolution (re-ID convention, the authors' resnet.py)
    block = resnet.layer4[0]
    stride = (last_stride, last_stride)
    (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = stride
    if block.downsample is not None:
        block.downsample[0].stride = stride
    return nn.Sequential(
        resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
        resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
    )


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
        if projection:
            self.proj = nn.Linear(self.dim, self.dim)
            nn.init.kaiming_normal_(self.proj.weight, mode="fan_out")
            nn.init.zeros_(self.proj.bias)
            self.proj_bn = _bn_neck(self.dim)

    def forward(self, images: Tensor, project: bool = False) -> tuple[Tensor, Tensor | None]:
        """``images [B,3,H,W]`` → ``(f [B,D], g [B,D] or None)``; ``g`` only when ``project``."""
        pooled = self.trunk(images).mean(dim=(2, 3))  # [B, D] global average pooling
        f = F.normalize(self.neck(pooled), dim=1)
        if not project:
            return f, None
        if self.proj is None or self.proj_bn is None:
            raise RuntimeError("this branch was built without a projection head")
        g = F.normalize(self.proj_bn(self.proj(pooled)), dim=1)
        return f, g
