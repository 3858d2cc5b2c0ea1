"""Training throughput (images/s) of the two-branch model: faithful fp32 vs the optimised step.

    .venv/bin/python benchmarks/train_step.py                       # resnet18, 64×32, CPU
    .venv/bin/python benchmarks/train_step.py --arch resnet50 --height 256 --width 128 --batch 64   # on a GPU

One step = forward of both branches + the MaskCL losses against memories + backward + Adam,
on random tensors (the data pipeline is measured separately: it is not the bottleneck on CPU).

- faithful: fp32, NCHW tensors, Adam with the per-parameter loop (``foreach=False``), as the
  authors' torch 1.x code ran;
- optimised: channels_last memory format, bf16 autocast (on CUDA; on CPU only with
  ``--cpu-bf16``, useful on CPUs with AMX), and the fused Adam kernel;
- parallel (maskcl on the CPU with >= 2 threads): optimised, with the two branches side by side
  on half the threads each (``train.parallel_branches``, :mod:`maskcl.engine.branches`).

The variants are measured interleaved (``--rounds`` rounds of every variant, ``--steps`` steps
each), each round on fresh weights, so they share the machine's load; prints the median
images/s of each variant over its steps of every round, and every variant's ratio to faithful.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without PYTHONPATH or an install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import LoadProbe, fmt_load  # noqa: E402

from maskcl.config import TrainConfig  # noqa: E402
from maskcl.engine.branches import ParallelBranches  # noqa: E402
from maskcl.engine.trainer import maskcl_losses  # noqa: E402
from maskcl.memory import InstanceMemory  # noqa: E402
from maskcl.models import TwoBranchNet  # noqa: E402


def step_seconds(method: str, variant: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Seconds of each timed step (after ``--warmup`` untimed ones) of one variant on fresh weights."""
    optimised = variant != "faithful"
    torch.manual_seed(0)
    net = TwoBranchNet(args.arch, pretrained="none", method=method).to(device).train()
    memory_format = torch.channels_last if optimised else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    n, b = 2048, args.batch
    images = torch.randn(b, 3, args.height, args.width, device=device).contiguous(memory_format=memory_format)
    masks = images.clone() if method == "maskcl" else None
    labels = torch.randint(0, 256, (n,), device=device)
    memories = {name: InstanceMemory(torch.randn(n, net.dim, device=device)) for name in ("rgb", "mask", "fusion")}
    for memory in memories.values():
        memory.set_labels(labels)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = (
        torch.optim.Adam(params, lr=3.5e-4, weight_decay=5e-4, fused=True)
        if optimised
        else torch.optim.Adam(params, lr=3.5e-4, weight_decay=5e-4, foreach=False)
    )
    amp = optimised and (device.type == "cuda" or args.cpu_bf16)
    indexes = torch.arange(b, device=device)
    branches = ParallelBranches(net, torch.get_num_threads()) if variant == "parallel" else None
    times = []
    with branches.session() if branches is not None else nullcontext():
        for _ in range(args.steps + args.warmup):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if branches is not None:
                step = branches.forward(images, masks)
                loss = sum(maskcl_losses(step.outputs, memories, labels[indexes], None, TrainConfig()).values())
                optimizer.zero_grad(set_to_none=True)
                branches.backward(step, loss)
            else:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    out = net.forward_train(images, masks)
                    loss = sum(maskcl_losses(out, memories, labels[indexes], None, TrainConfig()).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return times[args.warmup :]


def variants_of(method: str, device: torch.device, cpu_bf16: bool) -> list[str]:
    """The variants that apply: ``parallel`` is the fp32 CPU path of a two-branch net (no autocast)."""
    parallel = method == "maskcl" and device.type == "cpu" and torch.get_num_threads() >= 2 and not cpu_bf16
    return ["faithful", "optimised"] + (["parallel"] if parallel else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", default="maskcl,rgb")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU too (AMX CPUs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"device {device} ({name}); cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}; {args.arch} batch {args.batch} "
        f"{args.height}x{args.width}"
    )
    for method in args.methods.split(","):
        names = variants_of(method, device, args.cpu_bf16)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                probe = LoadProbe()
                seconds[name] += step_seconds(method, name, args, device)
                print(f"  {method} {name:9s} round: {args.batch / statistics.median(seconds[name][-args.steps:]):7.1f} "
                      f"img/s ({fmt_load(probe.stop())})", flush=True)
        rate = {name: args.batch / statistics.median(seconds[name]) for name in names}
        line = " | ".join(f"{name} {rate[name]:7.1f} img/s" for name in names)
        ratios = ", ".join(f"{name}/faithful {rate[name] / rate['faithful']:.2f}x" for name in names[1:])
        print(f"{method:7s} {line} | {ratios}")


if __name__ == "__main__":
    main()
