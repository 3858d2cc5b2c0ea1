"""Seconds per MaskCL training step (forward + loss + backward + fused Adam) on random tensors.

    .venv/bin/python benchmarks/engine_step.py --arch resnet18 --batch 32 --height 64 --width 32
    .venv/bin/python benchmarks/engine_step.py --method rgb --threads 1

Prints the median step time of each method and the maskcl/rgb ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maskcl.config import TrainConfig
from maskcl.engine.trainer import maskcl_losses
from maskcl.memory import InstanceMemory
from maskcl.models import TwoBranchNet


def step_time(method: str, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    net = TwoBranchNet(args.arch, pretrained="none", method=method).train()
    n, b = 512, args.batch
    images = torch.randn(b, 3, args.height, args.width)
    masks = torch.randn(b, 3, args.height, args.width) if method == "maskcl" else None
    dim = net.dim
    labels = torch.randint(0, 128, (n,))
    memories = {name: InstanceMemory(torch.randn(n, dim)) for name in ("rgb", "mask", "fusion")}
    for memory in memories.values():
        memory.set_labels(labels)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=3.5e-4, fused=True)
    indexes = torch.arange(b)
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        out = net.forward_train(images, masks)
        loss = sum(maskcl_losses(out, memories, labels[indexes], None, TrainConfig()).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step warms up the allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {method: step_time(method, args) for method in ("maskcl", "rgb")}
    for method, seconds in results.items():
        print(f"{method:7s} {args.arch} batch {args.batch} {args.height}x{args.width}: {seconds:.3f} s/step")
    print(f"maskcl / rgb = {results['maskcl'] / results['rgb']:.2f}× (threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
