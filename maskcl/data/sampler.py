"""P×K pseudo-identity sampler preferring other-camera companions.

Behaviour of the authors' ``RandomMultipleGallerySampler`` (paper.md §3), reimplemented: one
pass visits every pseudo-identity once in random order; for each it takes a random anchor image
and K−1 companions drawn from the identity's images taken by *another* camera (without
replacement when at least K such images exist, with replacement otherwise); when the identity has
no other-camera image the companions come from its other images; a singleton contributes its
anchor alone. Consecutive indices form the batches (``drop_last``), so a group may straddle two
batches, as in the original.

Unlike the original, whose pass is re-started by an ``IterLoader``, this sampler chains passes
until it has produced exactly ``num_samples`` indices (``iters × batch_size``): one DataLoader
iteration is one epoch. All randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class PKCameraSampler(Sampler[int]):
    """Indices for ``num_samples`` draws over pseudo-labels ``labels`` and cameras ``camids``."""

    def __init__(
        self,
        labels: Sequence[int],
        camids: Sequence[int],
        num_instances: int,
        num_samples: int,
        generator: torch.Generator | None = None,
    ):
        if len(labels) != len(camids):
            raise ValueError(f"{len(labels)} labels for {len(camids)} camera ids")
        self.num_instances = num_instances
        self.num_samples = num_samples
        self.generator = generator
        self.camids = [int(c) for c in camids]
        members: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            if label >= 0:
                members[int(label)].append(index)
        self.members = [members[k] for k in sorted(members)]

    def __len__(self) -> int:
        return self.num_samples

    def _pick(self, pool: list[int], count: int) -> list[int]:
        """``count`` items of ``pool``: without replacement iff ``len(pool) >= K`` (as the original)."""
        g = self.generator
        if len(pool) >= self.num_instances:
            order = torch.randperm(len(pool), generator=g)[:count]
        else:
            order = torch.randint(len(pool), (count,), generator=g)
        return [pool[i] for i in order.tolist()]

    def one_pass(self) -> list[int]:
        out: list[int] = []
        g = self.generator
        for k in torch.randperm(len(self.members), generator=g).tolist():
            group = self.members[k]
            anchor = group[int(torch.randint(len(group), (1,), generator=g))]
            out.append(anchor)
            if self.num_instances <= 1:
                continue
            other_cam = [i for i in group if self.camids[i] != self.camids[anchor]]
            pool = other_cam if other_cam else [i for i in group if i != anchor]
            if pool:
                out.extend(self._pick(pool, self.num_instances - 1))
        return out

    def __iter__(self) -> Iterator[int]:
        produced = 0
        while produced < self.num_samples:
            chunk = self.one_pass()
            if not chunk:
                return
            chunk = chunk[: self.num_samples - produced]
            produced += len(chunk)
            yield from chunk
