"""The premise ladder: method-agnostic rungs and the two methods, on the clothes-changing protocol.

    .venv/bin/python benchmarks/ladder.py                          # params.yaml's dataset, seeds 1,2,3
    .venv/bin/python benchmarks/ladder.py --synth-seed 1           # another synthetic set (generated)
    .venv/bin/python benchmarks/ladder.py --ablations --jobs 2     # + the paper's ablations, 2 runs at once

Rungs (every trained rung runs ``--seeds``, mean ± sample std):

1. chance: random features (5 draws);
2. raw pixels: test images and silhouettes flattened at the training size;
3. frozen start: the network ``model.pretrained`` gives (ImageNet), untrained: RGB ``f`` and mask ``f``;
4. supervised RGB-only bound: ``method=rgb cluster.oracle=identity`` (true identities instead of
   pseudo-labels), RGB ``f``;
5. supervised mask bound: ``method=maskcl cluster.oracle=identity``, the mask branch's ``f`` on the
   test silhouettes (does the data carry the premise?);
6. unsupervised RGB-only baseline (``method=rgb``), and 7. MaskCL (``method=maskcl``);
8. with ``--ablations``: MaskCL without the cross-view terms, without the neighbour loss, without fusion.

The synthetic set is calibrated on rungs 1–6 (DESIGN §5): supervised RGB ≥ 4× chance, unsupervised
RGB clearly above chance, mask bound above the RGB bound, same-clothes far above clothes-changing.
Where MaskCL lands against RGB-only is the result, whatever it is. Each training is a plain
``maskcl train --out WORK/<rung>-s<seed>`` (a finished run folder is reused, an interrupted one
resumes), so the command can be stopped and re-run, and every figure can be re-measured alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without PYTHONPATH or an install

from maskcl.cli import add_config_args, config_from_args  # noqa: E402
from maskcl.config import Config  # noqa: E402
from maskcl.data import build_dataset  # noqa: E402
from maskcl.data.records import DatasetSplits  # noqa: E402
from maskcl.engine.checkpoint import load_checkpoint, load_model_state  # noqa: E402
from maskcl.eval.protocols import evaluate_features  # noqa: E402
from maskcl.models.network import build_network  # noqa: E402

CPU = torch.device("cpu")
COLUMNS = (("cc", "mAP"), ("cc", "rank1"), ("standard", "mAP"), ("sc", "mAP"))


@dataclass(frozen=True)
class Rung:
    name: str
    overrides: tuple[str, ...]
    feature: str = "rgb"  # rgb: the RGB branch's f (the test feature); mask: the mask branch's f


TRAINED = (
    Rung("supervised RGB-only bound (identity oracle)", ("method=rgb", "cluster.oracle=identity")),
    Rung("supervised mask bound (identity oracle)", ("method=maskcl", "cluster.oracle=identity"), "mask"),
    Rung("unsupervised RGB-only", ("method=rgb",)),
    Rung("MaskCL", ("method=maskcl",)),
)
ABLATIONS = (
    Rung("MaskCL w/o cross-view terms", ("method=maskcl", "train.cross_view=false")),
    Rung("MaskCL w/o neighbour loss", ("method=maskcl", "train.neighbour_loss=false")),
    Rung("MaskCL w/o fusion", ("method=maskcl", "model.fusion=false")),
)


def slug(rung: Rung) -> str:
    return "-".join(o.replace("=", "_").replace(".", "_") for o in rung.overrides)


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def row(name: str, metrics: list[dict], chance: float) -> str:
    cols = [cell([m[p][k] for m in metrics if p in m]) for p, k in COLUMNS]
    ratio = f"{statistics.mean(m['cc']['mAP'] for m in metrics) / chance:.1f}×" if metrics else "–"
    n = f"n={len(metrics)}"
    return f"| {name} | " + " | ".join(cols) + f" | {ratio} | {n} |"


def header() -> str:
    names = " | ".join(f"{p} {'R-1' if k == 'rank1' else k}" for p, k in COLUMNS)
    return f"| rung | {names} | cc mAP ÷ chance | runs |\n|---|" + "---:|" * (len(COLUMNS) + 2)


def protocols_of(splits: DatasetSplits) -> list[str]:
    return [p for p in ("cc", "standard", "sc") if p in splits.protocols]


def score(splits: DatasetSplits, query: torch.Tensor, gallery: torch.Tensor) -> dict:
    return evaluate_features(query, gallery, splits, protocols=protocols_of(splits))


def view_features(encode, records, splits: DatasetSplits, cfg: Config, view: str) -> torch.Tensor:
    from maskcl.data.records import mask_path_for
    from maskcl.data.transforms import eval_transform
    from maskcl.engine.extract import extract_features

    paths = [mask_path_for(r.path, splits.root, Path(cfg.dataset.mask_root)) if view == "mask" else r.path for r in records]
    transform = eval_transform(cfg.train.height, cfg.train.width, grey=view == "mask")
    return extract_features(encode, paths, transform, CPU, batch_size=cfg.eval.batch_size, desc=f"ladder {view}", progress=False)


def network_scores(model, splits: DatasetSplits, cfg: Config, view: str) -> dict:
    model.eval()
    encode = model.mask_features if view == "mask" else model
    with torch.no_grad():
        q = view_features(encode, splits.query, splits, cfg, view)
        g = view_features(encode, splits.gallery, splits, cfg, view)
    return score(splits, q, g)


def pixel_scores(splits: DatasetSplits, cfg: Config, view: str) -> dict:
    q = view_features(lambda x: x.flatten(1), splits.query, splits, cfg, view)
    g = view_features(lambda x: x.flatten(1), splits.gallery, splits, cfg, view)
    return score(splits, q, g)


def train_run(out: Path, params: Path | None, sets: list[str], threads: int) -> Path:
    """One ``maskcl train`` in its own process (``threads`` intra-op threads); returns its folder."""
    if (out / "metrics.json").is_file():
        return out
    command = [sys.executable, "-m", "maskcl", "train", "--out", str(out)]
    if params is not None:
        command += ["--params", str(params)]
    for item in sets:
        command += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}): see {out / 'train.log'}")
    return out


def trained_scores(run: Path, rung: Rung, splits: DatasetSplits, cfg: Config) -> dict:
    if rung.feature == "rgb":
        return json.loads((run / "metrics.json").read_text())["metrics"]
    state = load_checkpoint(run / "last.pt")
    run_cfg = Config.from_dict(state["config"], source=str(run)).replace(**{"model.pretrained": "none"})
    model = build_network(run_cfg)
    load_model_state(model, state["model"], run / "last.pt")
    return network_scores(model, splits, cfg, "mask")


def synthetic_set(cfg: Config, seed: int, work: Path) -> Config:
    """Generate the configured synthetic set with another generator seed (and its masks) under ``work``."""
    from maskcl.data.synthetic import SynthSpec, generate_synthetic
    from maskcl.masks.generate import generate_for_config

    out = work / f"synthetic-seed{seed}"
    spec = SynthSpec(**{**cfg.to_dict()["synth"], "seed": seed})
    root = out / "LTCC_ReID"
    if not root.is_dir():
        generate_synthetic(spec, out, force=True, progress=False)
    cfg = cfg.replace(**{
        "synth.seed": seed, "dataset.root": str(root), "dataset.mask_root": str(out / "masks"),
        "masks.source": "ground_truth", "masks.parsing_dir": str(out / "parsing"),
    })
    generate_for_config(cfg, progress=False)
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--seeds", default="1,2,3", help="training seeds of every trained rung (comma-separated)")
    parser.add_argument("--synth-seed", type=int, default=None, help="generate the synthetic set with this seed instead")
    parser.add_argument("--work", type=Path, default=Path("generated/ladder"), help="run folders (reused when finished)")
    parser.add_argument("--ablations", action="store_true", help="also the paper's MaskCL ablations")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (each gets cores / jobs threads)")
    parser.add_argument("--only", default=None, help="comma-separated rung numbers to train (e.g. 4,6); all by default")
    args = parser.parse_args()
    cfg = config_from_args(args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = args.work
    sets = list(args.overrides)
    if args.synth_seed is not None:
        cfg = synthetic_set(cfg, args.synth_seed, work)
        work = work / f"synthetic-seed{args.synth_seed}"
        sets += [f"dataset.root={cfg.dataset.root}", f"dataset.mask_root={cfg.dataset.mask_root}", f"synth.seed={args.synth_seed}"]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(args.jobs, 1))
    torch.set_num_threads(cores)
    splits = build_dataset(cfg.dataset.name, cfg.dataset.root)
    started = time.time()
    print(
        f"# premise ladder — {time.strftime('%Y-%m-%d %H:%M')} — {platform.processor() or platform.machine()}, "
        f"{cores} CPUs, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# dataset {cfg.dataset.name} at {cfg.dataset.root} (synth seed {cfg.synth.seed}): {len(splits.train)} train, "
        f"{len(splits.query)} query, {len(splits.gallery)} gallery; {cfg.model.arch} pretrained={cfg.model.pretrained}, "
        f"{cfg.train.height}×{cfg.train.width}, {cfg.train.epochs}×{cfg.train.iters} iterations of {cfg.train.batch_size}; "
        f"training seeds {seeds}"
    )
    generator = torch.Generator().manual_seed(0)
    chance_runs = []
    for _ in range(5):
        q = torch.randn(len(splits.query), 64, generator=generator)
        g = torch.randn(len(splits.gallery), 64, generator=generator)
        chance_runs.append(score(splits, q, g))
    chance = statistics.mean(m["cc"]["mAP"] for m in chance_runs)
    lines = [header(), row("1. chance (random features, 5 draws)", chance_runs, chance)]
    for view in ("rgb", "mask"):
        lines.append(row(f"2. raw {view} pixels", [pixel_scores(splits, cfg, view)], chance))
    torch.manual_seed(cfg.seed)
    start = build_network(cfg.replace(method="maskcl"))
    for view in ("rgb", "mask"):
        lines.append(row(f"3. frozen start ({cfg.model.pretrained}), {view} f", [network_scores(start, splits, cfg, view)], chance))
    print("\n".join(lines), flush=True)

    rungs = list(TRAINED) + (list(ABLATIONS) if args.ablations else [])
    numbered = list(enumerate(rungs, start=4))
    wanted = None if args.only is None else {int(x) for x in args.only.split(",")}
    jobs = [(n, r, s) for n, r in numbered for s in seeds if wanted is None or n in wanted]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = {
            (n, s): pool.submit(train_run, work / f"{slug(r)}-s{s}", args.params, sets + list(r.overrides) + [f"seed={s}"], threads)
            for n, r, s in jobs
        }
        for n, rung in numbered:
            runs = [futures[(n, s)].result() for s in seeds if (n, s) in futures]
            if runs:
                metrics = [trained_scores(run, rung, splits, cfg) for run in runs]
                print(row(f"{n}. {rung.name}", metrics, chance), flush=True)
    print(f"# {time.time() - started:.0f} s; runs under {work}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
