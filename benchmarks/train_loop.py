"""Throughput of the real training loop on the default run: images/s of the training step (data
loading, forward, losses, backward, Adam, memory update) and of feature extraction (evaluation).

    .venv/bin/python benchmarks/train_loop.py                      # params.yaml, 2 threads
    .venv/bin/python benchmarks/train_loop.py --threads 1 --iters 10 --rounds 3 --method rgb

Each variant is one :class:`maskcl.engine.trainer.Engine` on the configured synthetic set (made
under ``--work`` for ``synth`` of the params file), set up once; the measurements then run
interleaved (round 1: every variant, round 2: every variant, ...), so the variants share the
machine's load, and each line states the load. Variants:

* ``before``: NCHW tensors, every image decoded on every draw (``model.channels_last=false``,
  ``train.image_cache_mb=0``): the default run before this benchmark existed;
* ``cache``: decoded images kept in memory (``train.image_cache_mb``);
* ``channels_last``: channels_last weights and inputs (``model.channels_last``);
* ``after``: both;
* ``parallel``: both, and the two branches side by side on a core each
  (``train.parallel_branches``): the default of params.yaml.

Per variant: the median over rounds of train images/s (``iters × batch_size`` images a round)
and of evaluation images/s (query ∪ gallery through the RGB branch), and the ratio of its
medians to ``before``'s. The checkpoint write is timed once per variant (not part of a step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: runs without PYTHONPATH or an install
sys.path.insert(0, str(ROOT / "benchmarks"))

from cluster import LoadProbe, fmt_load  # noqa: E402
from ladder import synthetic_set  # noqa: E402

from maskcl.config import Config, read_yaml_mapping  # noqa: E402
from maskcl.engine.logger import NullLogger  # noqa: E402
from maskcl.engine.trainer import Engine  # noqa: E402

_SERIAL = {"train.parallel_branches": False}
VARIANTS = {
    "before": {"model.channels_last": False, "train.image_cache_mb": 0, **_SERIAL},
    "cache": {"model.channels_last": False, "train.image_cache_mb": 1024, **_SERIAL},
    "channels_last": {"model.channels_last": True, "train.image_cache_mb": 0, **_SERIAL},
    "after": {"model.channels_last": True, "train.image_cache_mb": 1024, **_SERIAL},
    "parallel": {"model.channels_last": True, "train.image_cache_mb": 1024, "train.parallel_branches": True},
}


def build(cfg: Config, out: Path) -> tuple[Engine, float]:
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine(cfg, out, NullLogger(), device=torch.device("cpu"))
    start = time.perf_counter()
    engine.setup()  # memory initialisation: one pass over the train images (and masks)
    return engine, time.perf_counter() - start


def train_round(engine: Engine, epoch: int) -> tuple[float, dict]:
    labels, _ = engine._labels(0)  # the pseudo-labels of the initial memory, every round alike
    nbrs = engine._neighbours(labels, 0)
    probe = LoadProbe()
    start = time.perf_counter()
    engine._train_epoch(epoch, labels, nbrs)
    seconds = time.perf_counter() - start
    t = engine.cfg.train
    return t.iters * t.batch_size / seconds, probe.stop()


def eval_round(engine: Engine) -> tuple[float, dict]:
    n = len({r.path for r in engine.splits.query} | {r.path for r in engine.splits.gallery})
    probe = LoadProbe()
    start = time.perf_counter()
    engine.evaluate()
    return n / (time.perf_counter() - start), probe.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the run's params file")
    parser.add_argument("--method", default=None, help="maskcl or rgb (default: the params file's)")
    parser.add_argument("--iters", type=int, default=10, help="training iterations per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "maskcl-train-loop",
                        help="where the synthetic set is generated (kept for re-runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config.from_dict(read_yaml_mapping(args.params), source=str(args.params))
    if cfg.dataset.name != "synthetic":
        raise SystemExit(f"{args.params}: dataset.name is '{cfg.dataset.name}'; this benchmark runs the synthetic default")
    cfg = synthetic_set(cfg, cfg.synth.seed, args.work)
    overrides = {"train.iters": args.iters, "train.workers": 0}
    if args.method:
        overrides["method"] = args.method
    cfg = cfg.replace(**overrides)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    print(f"# {cfg.method}, {cfg.model.arch} {cfg.train.height}×{cfg.train.width}, batch {cfg.train.batch_size}, "
          f"{args.iters} iterations a round, {args.rounds} rounds, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.1f}", flush=True)
    engines: dict[str, Engine] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            engine, setup_s = build(cfg.replace(**VARIANTS[name]), Path(tmp) / name)
            engine._train_epoch(0, *_warm_labels(engine))  # first-call kernel set-up, not timed
            start = time.perf_counter()
            engine._save_checkpoint(0)
            print(f"{name:>13}: set-up {setup_s:.1f} s (memory initialisation), checkpoint write "
                  f"{time.perf_counter() - start:.2f} s ({engine.ckpt_path.stat().st_size / 1e6:.0f} MB)", flush=True)
            engines[name] = engine
        train: dict[str, list[float]] = {n: [] for n in names}
        evals: dict[str, list[float]] = {n: [] for n in names}
        for round_ in range(args.rounds):
            for name, engine in engines.items():
                ips, load = train_round(engine, round_ + 1)
                eps, eload = eval_round(engine)
                train[name].append(ips)
                evals[name].append(eps)
                print(f"round {round_ + 1} {name:>13}: train {ips:6.1f} img/s ({fmt_load(load)}), "
                      f"evaluation {eps:6.1f} img/s ({fmt_load(eload)})", flush=True)
    print("\n| variant | train img/s (median) | evaluation img/s (median) |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {statistics.median(train[name]):.1f} | {statistics.median(evals[name]):.1f} |")
    if "before" in train:
        for name in names:
            if name != "before":
                ratio_t = statistics.median(train[name]) / statistics.median(train["before"])
                ratio_e = statistics.median(evals[name]) / statistics.median(evals["before"])
                print(f"{name} / before (same run, interleaved): train {ratio_t:.2f}×, evaluation {ratio_e:.2f}×")


def _warm_labels(engine: Engine):
    labels, _ = engine._labels(0)
    return labels, engine._neighbours(labels, 0)


if __name__ == "__main__":
    main()
