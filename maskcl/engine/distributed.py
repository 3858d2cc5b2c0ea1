"""Multi-process training under ``torchrun``: the process group, rank helpers and collectives.

Why one module: every distributed call of the engine goes through these helpers, and each is the
identity when no process group is up, so a plain single-process run never touches
``torch.distributed`` and behaves exactly as it would without this module.

Launch (one process per GPU; on CPU, one per group of cores with the gloo backend)::

    torchrun --nproc_per_node=4 -m maskcl train --out runs/ddp --set train.batch_size=64

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
:func:`process_group` sees ``WORLD_SIZE > 1`` and joins: NCCL on ``cuda:LOCAL_RANK`` when the
configured device is CUDA, gloo on the CPU otherwise.

Collectives here assume every rank calls them in the same order with tensors of the same shape
(except :func:`all_gather_rows`, which pads); rank 0 is the authority for anything computed once
(pseudo-labels, evaluation, checkpoints) and hands it out with :func:`on_main`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from maskcl.errors import ConfigError, MaskclError, TrainingError

log = logging.getLogger(__name__)

T = TypeVar("T")

# ranks wait at a collective while rank 0 alone clusters, evaluates or writes a checkpoint; on a
# large dataset (DeepChange, ~75k images) that is minutes, far over NCCL's 10-minute default
TIMEOUT = dt.timedelta(hours=1)


# ---------------------------------------------------------------- the launch (environment only)
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} is {raw!r}; expected an integer (torchrun sets it)"
        ) from None


def launch_world() -> int:
    """``WORLD_SIZE`` of the launch (1 when not started by ``torchrun``); reads only the env."""
    return _env_int("WORLD_SIZE", 1)


def launch_rank() -> int:
    """``RANK`` of this process in the launch (0 when not started by ``torchrun``)."""
    return _env_int("RANK", 0)


# ---------------------------------------------------------------- the group
def active() -> bool:
    """True when a process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def _local_device(device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    local = _env_int("LOCAL_RANK", 0)
    count = torch.cuda.device_count()
    if local >= count:
        raise ConfigError(
            f"LOCAL_RANK {local} but torch sees {count} CUDA device(s); start at most {count} processes "
            "per node (torchrun --nproc_per_node) or set train.device: cpu"
        )
    return torch.device("cuda", local)


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the ``torchrun`` group for the run's duration; yields this process's device.

    Without a multi-process launch this yields ``device`` and does nothing else. A group that the
    caller already started is used as is and left up.
    """
    if launch_world() <= 1 and not active():
        yield device
        return
    if not dist.is_available():
        raise ConfigError(
            f"WORLD_SIZE is {launch_world()} (a torchrun launch) but this torch build has no "
            "torch.distributed; run a single process or install a torch build with distributed support"
        )
    local = _local_device(device)
    started = False
    if not dist.is_initialized():
        if local.type == "cuda":
            torch.cuda.set_device(local)  # NCCL and broadcast_object_list use the current device
        backend = "nccl" if local.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
        started = True
        log.info("process %d of %d joined (%s, %s)", dist.get_rank(), dist.get_world_size(), backend, local)
    try:
        yield local
    finally:
        if started:
            dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


# ---------------------------------------------------------------- collectives
def all_gather(tensor: Tensor) -> Tensor:
    """``[world·B, ...]``: every rank's ``tensor [B, ...]`` (same shape on all) in rank order."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Like :func:`all_gather` for row counts that differ between ranks (zero included).

    Rows are padded to the largest count for the collective and trimmed after, so the result is
    every rank's rows, in rank order, and nothing else.
    """
    if not active():
        return tensor
    count = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    counts = all_gather(count).tolist()
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = all_gather(padded).split(max(counts), dim=0)
    return torch.cat([part[:n] for part, n in zip(gathered, counts)], dim=0)


def mean_over_ranks(tensor: Tensor) -> Tensor:
    """The element-wise mean of ``tensor`` over ranks (itself in a single process)."""
    if not active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total / world()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable; put tensors on the CPU first)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result — or its error — handed to every rank.

    An error on rank 0 is raised on every rank, so no rank is left waiting at the next collective
    (a disk-full checkpoint or a failed clustering stops the whole run with rank 0's message).
    """
    if not active():
        return fn()
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
    payload = broadcast_object((result, _portable(error)) if is_main() else None)
    if error is not None:
        raise error
    if payload[1] is not None:
        raise payload[1]
    return payload[0]


def _portable(error: BaseException | None) -> BaseException | None:
    """``error`` as other ranks receive it: a project error keeps its class and message."""
    if error is None or isinstance(error, MaskclError):
        return error
    return TrainingError(f"rank 0 failed: {type(error).__name__}: {error}")


def sync_rng_from_main() -> None:
    """Give every rank rank 0's Python, numpy, torch CPU and current-CUDA-device RNG states.

    Why: work done on rank 0 only (clustering, evaluation) may draw random numbers, and a resumed
    run restores rank 0's recorded states; training then draws the neighbour-loss Bernoulli
    variables on every rank from the global torch RNG, which must therefore agree everywhere —
    and equal what a single process would hold at that point.
    """
    if not active():
        return
    state: dict[str, Any] | None = None
    if is_main():
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # the current device: cuda:LOCAL_RANK
    state = broadcast_object(state)
    if is_main() or state is None:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, then the others (one download into a shared cache, not N)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


# ---------------------------------------------------------------- work splitting
def batch_aligned_shard(n: int, batch_size: int) -> slice:
    """This rank's contiguous rows of ``n`` items cut into ``batch_size`` batches.

    Whole batches go to each rank (the last rank may get fewer, or none), so every rank runs
    exactly the batches a single process would run — the same shapes through the same kernels —
    and the gathered features equal single-process extraction.
    """
    batches = -(-n // batch_size)
    per_rank = -(-batches // world())
    start = min(rank() * per_rank * batch_size, n)
    return slice(start, min(start + per_rank * batch_size, n))


# ---------------------------------------------------------------- the model wrapper
class TrainingForward(nn.Module):
    """``forward(images, masks) = net.forward_train(images, masks)``.

    DistributedDataParallel hooks only ``forward``; the training step calls ``forward_train``,
    so it goes through this module to get its gradients all-reduced.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, masks: Tensor | None = None) -> Any:
        return self.net.forward_train(images, masks)


def data_parallel(net: nn.Module, device: torch.device) -> nn.Module:
    """``net``'s training forward wrapped in DistributedDataParallel (gradients averaged).

    No buffer broadcast before each forward: the only buffers are batch-norm statistics, which the
    synchronised batch norm keeps identical on every rank, so re-sending them each step is waste.
    Every trainable parameter takes part in every step's loss, so unused-parameter search is off.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch 2.14 renamed broadcast_buffers (deprecated) to forward_sync_buffers; older torch lacks it
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if renamed else {"broadcast_buffers": False}
    return DistributedDataParallel(
        TrainingForward(net),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
        gradient_as_bucket_view=True,
        **no_buffer_sync,
    )
