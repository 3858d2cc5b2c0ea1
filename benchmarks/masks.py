"""Mask generation speed (images/s), run by hand: ``.venv/bin/python benchmarks/masks.py``.

1. Import / ground-truth path: parsing PNG → silhouette PNG through ``generate_masks`` (header
   read of the image, size check, LUT, atomic write), against a bare reference loop in the same
   run (read PNG → ``!= 0`` → ``Image.save`` straight to the final path).
2. SCHP forward at 473×473 (LIP, random weights; speed does not depend on the values): the full
   ``SCHPParser.parse`` (warp, network, upsample, inverse warp, argmax) at batch 1 and batch 4, and
   the bare network forward at batch 1 as the reference.

Options: ``--import-images 400 --schp-images 8 --batch-sizes 1,4 --device cpu --threads 0``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskcl.masks.generate import generate_masks  # noqa: E402
from maskcl.masks.labels import voc_palette  # noqa: E402
from maskcl.masks.schp import AugmentCE2P, SCHPParser, resolve_device  # noqa: E402


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def make_tree(folder: Path, n: int, height: int = 128, width: int = 64) -> tuple[Path, Path, list[Path]]:
    rng = np.random.default_rng(0)
    root, parsing = folder / "images", folder / "parsing"
    (root / "train").mkdir(parents=True)
    (parsing / "train").mkdir(parents=True)
    images = []
    for i in range(n):
        image = root / "train" / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image)
        ids = np.zeros((height, width), np.uint8)
        body = (slice(height // 8, height - height // 8), slice(width // 4, width - width // 4))
        ids[body] = rng.integers(1, 20, ids[body].shape)
        png = Image.fromarray(ids)
        png.putpalette(voc_palette(20))
        png.save(parsing / "train" / f"{i:06d}.png")
        images.append(image)
    return root, parsing, images


def bench_import(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, parsing, images = make_tree(tmp, n)
        started = time.perf_counter()
        for image in images:  # reference: no checks, no atomic write
            ids = np.array(Image.open(parsing / "train" / image.name))
            out = tmp / "ref" / image.name
            out.parent.mkdir(exist_ok=True)
            Image.fromarray(np.where(ids != 0, 255, 0).astype(np.uint8)).save(out)
        reference = n / (time.perf_counter() - started)
        started = time.perf_counter()
        summary = generate_masks(images, root, tmp / "masks", source="import", parsing_dir=parsing, progress=False)
        ours = n / (time.perf_counter() - started)
        assert summary.made == n
        started = time.perf_counter()
        generate_masks(images, root, tmp / "masks", source="import", parsing_dir=parsing, progress=False)
        resume = n / (time.perf_counter() - started)
    print(f"import (128×64 PNG → silhouette), {n} images:")
    print(f"  reference loop        {reference:8.1f} img/s")
    print(f"  generate_masks        {ours:8.1f} img/s  ({ours / reference:.2f}× reference)")
    print(f"  resume (all skipped)  {resume:8.1f} img/s")


def bench_schp(n: int, batch_sizes: list[int], device: torch.device) -> None:
    torch.manual_seed(0)
    model = AugmentCE2P(20).eval().to(device)
    parser = SCHPParser(model, "lip", device=device)  # 473×473
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 64, 3), dtype=np.uint8) for _ in range(n)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    parser.parse(images[:1])  # warm-up
    sync()
    x = torch.randn(1, 3, 473, 473, device=device)
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            model(x)
    sync()
    forward = n / (time.perf_counter() - started)
    print(f"SCHP LIP 473×473 (random weights, 128×64 images), {n} images on {device}:")
    print(f"  reference: bare forward, batch 1   {forward:7.3f} img/s")
    for bs in batch_sizes:
        started = time.perf_counter()
        for start in range(0, n, bs):
            parser.parse(images[start : start + bs])
        sync()
        rate = n / (time.perf_counter() - started)
        print(f"  parse (warp+net+unwarp), batch {bs:<3d} {rate:7.3f} img/s  ({rate / forward:.2f}× reference)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--import-images", type=int, default=400)
    ap.add_argument("--schp-images", type=int, default=8)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print("machine:", machine(device))
    print("load average (1/5/15 min) at start: %.2f %.2f %.2f" % os.getloadavg())  # shared cores skew figures
    bench_import(args.import_images)
    if args.schp_images:
        bench_schp(args.schp_images, [int(b) for b in args.batch_sizes.split(",")], device)
    print("load average (1/5/15 min) at end:   %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
