"""The RGB and mask branches side by side on the CPU, one core each, for the same result.

Why: at re-ID batch sizes on a few CPU cores, oneDNN's kernels split over the cores scale poorly
(MobileNetV2, 96×48, batch 32: two threads give ~1.4× one thread for the whole step), while the
two branches are independent until their features meet in the losses. Running each branch's
forward and backward on its own core (threads // 2 each) keeps every kernel single-threaded and
the cores busy: ~1.8× one thread (``benchmarks/train_step.py``).

Why it is the same computation: the losses' backward stops at detached copies of the branch
outputs (autograd leaves), and each branch then back-propagates its leaves' gradients on its
own thread. By the chain rule at that boundary this is the joint backward, and each kernel runs
as it would with one thread in all, so a parallel step is **bit-identical to a one-thread step**
(tested); it differs from a two-thread joint step only as any two thread counts do.

Used by the engine only on the CPU, in a single process, for the two-branch method, with at
least two torch threads (``train.parallel_branches``); everywhere else the joint step runs.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor

from maskcl.models.network import TrainOutputs, TwoBranchNet

T = TypeVar("T")


def _leaf(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().requires_grad_()


def _backprop(pairs: list[tuple[Tensor, Tensor]]) -> None:
    if pairs:
        torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])


@dataclass
class BranchStep:
    """One training step's outputs (leaves for the losses) and the branch graphs behind them."""

    outputs: TrainOutputs
    rgb: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (branch output, its leaf)
    mask: list[tuple[Tensor, Tensor]] = field(default_factory=list)


class ParallelBranches:
    """Runs a :class:`TwoBranchNet`'s branches concurrently: RGB on the calling thread, mask on a worker.

    Use inside :meth:`session`, which sets the threads per branch and owns the worker thread.
    """

    def __init__(self, model: TwoBranchNet, total_threads: int):
        if model.mask is None:
            raise ValueError("parallel branches need the two-branch network")
        if total_threads < 2:
            raise ValueError(f"parallel branches need at least 2 threads, got {total_threads}")
        self.model = model
        self.threads_per_branch = total_threads // 2
        self._pool: ThreadPoolExecutor | None = None

    @contextmanager
    def session(self) -> Iterator[ParallelBranches]:
        """Branch threads for a block of steps (an epoch); the thread count is restored after."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads_per_branch)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskcl-mask-branch")
        try:
            yield self
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None
            torch.set_num_threads(before)

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._pool is None:
            raise RuntimeError("ParallelBranches used outside its session()")
        threads = self.threads_per_branch

        def task() -> T:
            torch.set_num_threads(threads)  # this thread's OpenMP team, whatever it was before
            return fn()

        return self._pool.submit(task)

    def both(self, on_rgb: Callable[[], T], on_mask: Callable[[], T]) -> tuple[T, T]:
        """``(on_rgb(), on_mask())``, the second on the worker thread; both finish before this returns."""
        pending = self._submit(on_mask)
        try:
            first = on_rgb()
        finally:
            second = pending.result()  # never leave the worker running past this call
        return first, second

    def forward(self, images: Tensor, masks: Tensor) -> BranchStep:
        """The training forward of both branches, concurrently; the fusion head on leaves."""
        model = self.model
        assert model.mask is not None
        mask_branch = model.mask
        (f_rgb, g_rgb), (f_mask, _) = self.both(
            lambda: model.rgb(images, project=model.rgb.proj is not None), lambda: mask_branch(masks)
        )
        leaf_f, leaf_g, leaf_m = _leaf(f_rgb), _leaf(g_rgb), _leaf(f_mask)
        assert leaf_f is not None and leaf_m is not None
        outputs = TrainOutputs(f_rgb=leaf_f, g_rgb=leaf_g, f_mask=leaf_m)
        if model.fusion is not None:
            outputs.h = model.fusion(leaf_f, leaf_m)  # stop-gradient inputs: trains the head only
        step = BranchStep(outputs, rgb=[(f_rgb, leaf_f)], mask=[(f_mask, leaf_m)])
        if g_rgb is not None and leaf_g is not None:
            step.rgb.append((g_rgb, leaf_g))
        return step

    def backward(self, step: BranchStep, total: Tensor) -> None:
        """``total.backward()`` down to the leaves, then each branch from its leaves' gradients."""
        total.backward()

        def grads(pairs: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
            return [(out, leaf.grad) for out, leaf in pairs if leaf.grad is not None]

        rgb, mask = grads(step.rgb), grads(step.mask)
        self.both(lambda: _backprop(rgb), lambda: _backprop(mask))
        step.rgb.clear()
        step.mask.clear()
