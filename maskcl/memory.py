"""Instance memory: one L2-normalised slot per training image, and cluster prototypes from it.

MaskCL keeps three of these (RGB, mask, fusion; paper.md §2.2). Each slot is refreshed by its
image's newest feature after every step, ``m ← normalize(μ·m + (1−μ)·x)`` with μ = 0.2, and the
prototype of a pseudo-class is the plain mean of its member slots (not renormalised: a tight
cluster has a longer prototype, which the authors' softmax sees). The memory is not a parameter:
no gradient flows into it. It lives on whatever device its tensor is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class InstanceMemory:
    """``feats [N, D]`` slots plus the current pseudo-labels ``labels [N]`` (0..C-1)."""

    def __init__(self, feats: Tensor, momentum: float = 0.2):
        self.feats = F.normalize(feats.detach().float(), dim=1).clone()  # [N, D]
        self.momentum = float(momentum)
        self.labels = torch.zeros(len(feats), dtype=torch.long, device=feats.device)  # [N]
        self.num_classes = 1

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def set_labels(self, labels: Tensor) -> None:
        """Pseudo-labels for every slot, contiguous 0..C-1 (singletons included)."""
        labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        if labels.shape != (len(self.feats),):
            raise ValueError(f"labels have shape {tuple(labels.shape)}; expected ({len(self.feats)},)")
        self.labels = labels
        self.num_classes = int(labels.max().item()) + 1

    @torch.no_grad()
    def update(self, x: Tensor, indexes: Tensor) -> None:
        """``m[i] ← normalize(μ·m[i] + (1−μ)·x)`` for every batch row; ``x [B, D]``, ``indexes [B]``.

        Repeated indexes in one batch are applied in order, as the authors' per-sample loop does.
        """
        x = x.detach().float()
        indexes = indexes.to(self.device)
        if len(torch.unique(indexes)) == len(indexes):
            mixed = self.momentum * self.feats[indexes] + (1.0 - self.momentum) * x
            self.feats[indexes] = F.normalize(mixed, dim=1)
            return
        for row, i in zip(x, indexes.tolist()):
            self.feats[i] = F.normalize(self.momentum * self.feats[i] + (1.0 - self.momentum) * row, dim=0)

    @torch.no_grad()
    def prototypes(self) -> Tensor:
        """``[C, D]``: the mean of the member slots of each pseudo-class (not renormalised)."""
        sums = torch.zeros(self.num_classes, self.feats.shape[1], device=self.device)
        sums.index_add_(0, self.labels, self.feats)
        counts = torch.bincount(self.labels, minlength=self.num_classes).clamp_min(1)
        return sums / counts.unsqueeze(1).to(sums.dtype)

    def state_dict(self) -> dict:
        return {"feats": self.feats.cpu(), "labels": self.labels.cpu(), "momentum": self.momentum}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> "InstanceMemory":
        memory = cls.__new__(cls)
        memory.feats = state["feats"].to(device).float()
        memory.momentum = float(state["momentum"])
        memory.labels = state["labels"].to(device).long()
        memory.num_classes = int(memory.labels.max().item()) + 1 if len(memory.labels) else 1
        return memory
