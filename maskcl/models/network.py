"""The MaskCL two-branch network (paper.md §2.1) and its RGB-only baseline.

- ``rgb``: ResNet branch on the RGB image, with the projection ``g`` the cross-view terms train.
- ``mask``: a separate ResNet branch (no weight sharing) on the silhouette mask. The authors build
  a projection head on it too but never use its output (so it never receives a gradient); it is
  left out here, which changes nothing in training.
- ``fusion``: ``h = L2norm(BN(Linear_2D→D(concat(sg f_rgb, sg f_mask))))``; the stop-gradients mean
  the fusion loss trains only this layer, never the backbones.

``method="rgb"`` builds the RGB branch alone (the RGB-only baseline on the same engine). At test
time only the RGB branch's ``f`` is used (:meth:`TwoBranchNet.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskcl.models.backbone import ReIDBranch, _bn_neck


class FusionHead(nn.Module):
    """``h = L2norm(BN(Linear(concat(f_rgb.detach(), f_mask.detach()))))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(2 * dim, dim)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        nn.init.zeros_(self.fc.bias)
        self.bn = _bn_neck(dim)

    def forward(self, f_rgb: Tensor, f_mask: Tensor) -> Tensor:
        joint = torch.cat([f_rgb.detach(), f_mask.detach()], dim=1)  # [B, 2D]
        return F.normalize(self.bn(self.fc(joint)), dim=1)


@dataclass
class TrainOutputs:
    """What one training forward yields; absent parts are ``None`` (RGB-only, no fusion …)."""

    f_rgb: Tensor  # [B, D]
    g_rgb: Tensor | None = None  # [B, D] RGB projection (cross-view terms)
    f_mask: Tensor | None = None  # [B, D]
    h: Tensor | None = None  # [B, D] fused feature


class TwoBranchNet(nn.Module):
    """RGB branch, optional mask branch and optional fusion head."""

    def __init__(
        self,
        arch: str = "resnet50",
        pretrained: str = "imagenet",
        last_stride: int = 1,
        method: str = "maskcl",
        fusion: bool = True,
        cross_view: bool = True,
        channels_last: bool = False,
    ):
        super().__init__()
        self.method = method
        two = method == "maskcl"
        self.rgb = ReIDBranch(arch, pretrained, last_stride, projection=two and cross_view)
        self.dim = self.rgb.dim
        self.mask = ReIDBranch(arch, pretrained, last_stride, projection=False) if two else None
        self.fusion = FusionHead(self.dim) if two and fusion else None
        if channels_last:  # weights and every branch input (training, extraction, evaluation)
            self.to(memory_format=torch.channels_last)
            for branch in (self.rgb, self.mask):
                if branch is not None:
                    branch.memory_format = torch.channels_last

    def forward(self, images: Tensor) -> Tensor:
        """Test-time retrieval feature: the RGB branch's ``f`` ``[B, D]``."""
        return self.rgb(images)[0]

    def mask_features(self, masks: Tensor) -> Tensor:
        """The mask branch's ``f`` ``[B, D]`` (memory initialisation)."""
        if self.mask is None:
            raise RuntimeError("the RGB-only network has no mask branch")
        return self.mask(masks)[0]

    def forward_train(self, images: Tensor, masks: Tensor | None = None) -> TrainOutputs:
        """Every training output for a batch: ``images``/``masks`` ``[B,3,H,W]``."""
        f_rgb, g_rgb = self.rgb(images, project=self.rgb.proj is not None)
        out = TrainOutputs(f_rgb=f_rgb, g_rgb=g_rgb)
        if self.mask is not None:
            if masks is None:
                raise ValueError("the two-branch network needs the masks of the batch")
            out.f_mask = self.mask(masks)[0]
            if self.fusion is not None:
                out.h = self.fusion(f_rgb, out.f_mask)
        return out


def build_network(cfg) -> TwoBranchNet:
    """The network a :class:`maskcl.config.Config` describes."""
    return TwoBranchNet(
        arch=cfg.model.arch,
        pretrained=cfg.model.pretrained,
        last_stride=cfg.model.last_stride,
        method=cfg.method,
        fusion=cfg.model.fusion,
        cross_view=cfg.train.cross_view,
        channels_last=cfg.model.channels_last,
    )
