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

:class:`GlobalBatchRows` turns that sequence into what one process loads: ``train.batch_size``
is the *global* batch; with ``world`` processes each takes ``batch_size / world`` contiguous rows
of every global batch (every process generates the whole sequence from the same generator seed,
so no index list is exchanged), and every draw carries its own augmentation seed
(:func:`draw_seed`) so the augmentation does not depend on which process or worker loads it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from maskcl.errors import ConfigError


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


def draw_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the ``position``-th draw of ``epoch``'s global sequence.

    A function of the run's seed, the epoch and the position only — not of the process, the
    DataLoader worker or the order in which workers run — so one, two or eight processes with any
    ``train.workers`` augment every draw identically. ``SeedSequence`` hashes the triple, so
    neighbouring positions get unrelated streams.
    """
    words = [seed & 0xFFFF_FFFF_FFFF_FFFF, epoch, position]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def rows_per_rank(batch_size: int, num_instances: int, world: int) -> int:
    """``batch_size / world``, checked to be a whole number of P×K groups per process."""
    if world < 1 or batch_size % (world * num_instances) != 0:
        raise ConfigError(
            f"train.batch_size is {batch_size} with {world} processes (torchrun --nproc_per_node × nodes); "
            f"expected a multiple of processes × train.num_instances = {world} × {num_instances} = "
            f"{world * num_instances}, so every process gets whole P×K groups of the global batch"
        )
    return batch_size // world


class GlobalBatchRows(Sampler[tuple[int, int]]):
    """``(index, augmentation seed)`` for this process's rows of every global batch of ``base``.

    ``base`` yields the global sequence (``iters × batch_size`` indices, the same on every
    process); process ``rank`` of ``world`` keeps rows ``[rank·b, (rank+1)·b)`` of each
    consecutive ``batch_size`` block, ``b = batch_size / world``. Concatenating the processes' rows
    of one block in rank order gives the single-process batch. With ``world = 1`` every row is kept.
    """

    def __init__(
        self,
        base: Sampler[int],
        batch_size: int,
        num_instances: int,
        seed: int,
        epoch: int,
        world: int = 1,
        rank: int = 0,
    ):
        self.rows = rows_per_rank(batch_size, num_instances, world)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        self.base = base
        self.batch_size = batch_size
        self.world = world
        self.first = rank * self.rows
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.base), self.batch_size)
        return full * self.rows + min(max(rest - self.first, 0), self.rows)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # the whole global sequence is drawn on every process (same generator consumption)
        for position, index in enumerate(self.base):
            if self.first <= position % self.batch_size < self.first + self.rows:
                yield index, draw_seed(self.seed, self.epoch, position)
