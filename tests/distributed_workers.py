"""Process bodies for tests/test_distributed.py, in a module of their own because spawned
processes import their function by name (a test module would drag pytest and its fixtures in).

:func:`launch` starts ``nprocs`` processes the way ``torchrun`` would look to the engine: the
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` environment on 127.0.0.1 and
a free port, one torch thread each (the test machine has two shared cores).
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(fn: Callable[..., None], nprocs: int, *args: Any) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` spawned processes; a failure in one stops all and
    is raised here."""
    import torch.multiprocessing as mp

    mp.start_processes(_entry, args=(nprocs, free_port(), fn, args), nprocs=nprocs, start_method="spawn")


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    fn(rank, *args)


# ---------------------------------------------------------------- SyncBatchNorm
def bn_case() -> dict[str, Any]:
    """The shared inputs: layers with non-trivial affine parameters and stale running stats, a
    global batch, its upstream gradient, and each rank's rows (uneven for the 1-d case)."""
    gen = torch.Generator().manual_seed(0)
    bn2d = nn.BatchNorm2d(3)
    neck = nn.BatchNorm1d(5, momentum=None)  # cumulative average branch
    neck.bias.requires_grad_(False)  # the frozen BN-neck bias
    with torch.no_grad():
        for layer in (bn2d, neck):
            layer.weight.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
            layer.bias.copy_(torch.randn(layer.num_features, generator=gen))
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
    steps = []
    for _ in range(2):  # two steps: running statistics compound
        x2d = torch.randn(6, 3, 5, 4, generator=gen) * 3 + 2
        x1d = torch.randn(8, 5, generator=gen) * 0.5 - 4
        steps.append({"x2d": x2d, "dy2d": torch.randn(x2d.shape, generator=gen),
                      "x1d": x1d, "dy1d": torch.randn(x1d.shape, generator=gen)})
    return {"bn2d": bn2d, "neck": neck, "steps": steps,
            "rows2d": [slice(0, 3), slice(3, 6)], "rows1d": [slice(0, 3), slice(3, 8)]}


def run_layers(bn2d: nn.Module, neck: nn.Module, steps: list[dict], rows2d: slice, rows1d: slice) -> dict:
    """Forward/backward the steps' ``rows`` through both layers; what each produced."""
    out: dict[str, Any] = {"y2d": [], "gx2d": [], "y1d": [], "gx1d": []}
    for step in steps:
        for layer, kind, rows in ((bn2d, "2d", rows2d), (neck, "1d", rows1d)):
            x = step[f"x{kind}"][rows].clone().requires_grad_(True)
            y = layer(x)
            (y * step[f"dy{kind}"][rows]).sum().backward()
            out[f"y{kind}"].append(y.detach())
            out[f"gx{kind}"].append(x.grad)
    for layer, kind in ((bn2d, "2d"), (neck, "1d")):
        out[f"state{kind}"] = {k: v.clone() for k, v in layer.state_dict().items()}
        out[f"gw{kind}"] = layer.weight.grad
        out[f"gb{kind}"] = layer.bias.grad
    return out


def sync_bn_worker(rank: int, out_dir: Path) -> None:
    from maskcl.engine import distributed
    from maskcl.models.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

    with distributed.process_group(torch.device("cpu")):
        case = bn_case()
        model = nn.Sequential(case["bn2d"], case["neck"])
        convert_sync_batchnorm(model)
        assert all(isinstance(m, SyncBatchNorm) for m in model)
        assert not model[1].bias.requires_grad
        model.train()
        result = run_layers(model[0], model[1], case["steps"], case["rows2d"][rank], case["rows1d"][rank])
        torch.save(result, Path(out_dir) / f"bn_rank{rank}.pt")


# ---------------------------------------------------------------- whole runs
class FirstStepGrads:
    """Optimizer pre-step hook keeping the gradients the FIRST step of a run sees: each trainable
    tensor's norm and ~1000 evenly spaced elements (enough to expose a wrong gradient, small
    enough to save). Register it with ``torch.optim.optimizer.register_optimizer_step_pre_hook``."""

    def __init__(self) -> None:
        self.grads: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # id(param) → (norm, sample)

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.grads is not None:
            return
        self.grads = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = p.grad.detach().flatten()
                self.grads[id(p)] = (g.norm(), g[:: max(1, g.numel() // 1000)].clone())

    def by_name(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: self.grads[id(p)] for name, p in model.named_parameters() if id(p) in (self.grads or {})}


def recorded_fit(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """``trainer.fit(cfg, out_dir)``, and what this process ended with: its model, memories and
    history, and the first step's gradients (rank 0's checkpoint alone would not show that the
    other processes agree)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from maskcl.engine import trainer

    kept: dict[str, Any] = {}
    run = trainer.Engine.run

    def run_and_keep(engine: trainer.Engine) -> trainer.TrainResult:
        result = run(engine)
        kept.update(model=engine.model.state_dict(), history=result.history, world=engine.world,
                    memories={k: copy.deepcopy(m.state_dict()) for k, m in engine.memories.items()},
                    first_grads=grads.by_name(engine.model))
        return result

    grads = FirstStepGrads()
    handle = register_optimizer_step_pre_hook(grads)
    trainer.Engine.run = run_and_keep
    try:
        trainer.fit(cfg, out_dir)
    finally:
        trainer.Engine.run = run
        handle.remove()
    return kept


def fit_worker(rank: int, splits: Any, runs: list[tuple[Any, Path]]) -> None:
    """Each ``(cfg, out_dir)`` of ``runs`` through :func:`recorded_fit` in turn (each joins and
    leaves the process group); what each ended with goes to ``out_dir/rank<r>.pt``."""
    from maskcl.engine import trainer

    trainer.load_splits = lambda _cfg: splits
    for cfg, out_dir in runs:
        torch.save(recorded_fit(cfg, out_dir), Path(out_dir) / f"rank{rank}.pt")
