"""Test helper: write real Sacred runs (2 methods × 3 seeds) through a given observer.

The numbers are fixed by hand in ``RESULTS`` so the expected table cells can be computed
independently with :mod:`statistics` in the tests.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

DATASET = "vcclothes"  # the dataset the published rows quote, so Δ rows appear
SEEDS = (1, 2, 3)
METHODS = ("maskcl", "rgb")

# (method, seed) -> protocol -> (mAP, rank1)
RESULTS: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("maskcl", 1): {"cc": (60.0, 70.0), "standard": (75.0, 85.0)},
    ("maskcl", 2): {"cc": (62.0, 71.0), "standard": (76.0, 86.0)},
    ("maskcl", 3): {"cc": (64.0, 75.0), "standard": (77.0, 90.0)},
    ("rgb", 1): {"cc": (40.0, 50.0), "standard": (80.0, 88.0)},
    ("rgb", 2): {"cc": (41.0, 52.0), "standard": (81.0, 89.0)},
    ("rgb", 3): {"cc": (45.0, 57.0), "standard": (79.0, 90.0)},
}

BASE_CONFIG: dict[str, Any] = {
    "seed": 1,
    "method": "maskcl",
    "eps": 0.6,
    "eps_gap": 0.02,
    "k1": 30,
    "k2": 6,
    "min_samples": 4,
    "dataset": {"name": DATASET, "root": "/data/VC-Clothes", "mask_root": "/masks"},
    "model": {"arch": "resnet50", "pretrained": "imagenet"},
    "train": {"epochs": 4, "lr": 0.00035, "device": "cpu"},
    "cluster": {"refine": True, "knn": "exact"},
    "io": {"checkpoint": "generated/train/last.pt", "metrics": "results/metrics.json"},  # paths: never a "setting"
}


def metrics_of(method: str, seed: int, shift: float = 0.0) -> dict[str, dict[str, float]]:
    out = {}
    for protocol, (m, r1) in RESULTS[(method, seed)].items():
        out[protocol] = {
            "mAP": m + shift,
            "rank1": r1 + shift,
            "rank5": min(100.0, r1 + 8.0),
            "rank10": min(100.0, r1 + 12.0),
            "rank20": min(100.0, r1 + 15.0),
            "n_queries": 100,
            "n_skipped": 2,
        }
    return out


def expected(method: str, protocol: str, metric: str) -> tuple[float, float, int]:
    """(mean, sample std, n) over the seeds, computed with the standard library."""
    index = {"mAP": 0, "rank1": 1}[metric]
    values = [RESULTS[(method, s)][protocol][index] for s in SEEDS]
    return statistics.mean(values), statistics.stdev(values), len(values)


def write_runs(observer_factory, *, with_failed: bool = True, with_train: bool = True, extra_eps: float | None = None) -> None:
    """Run the evaluate experiment for every (method, seed) (+ a FAILED run, + train runs).

    ``observer_factory()`` returns a fresh observer (Sacred observers hold per-run state).
    ``extra_eps``: also run maskcl seeds 1 and 2 with this eps (a sweep inside Sacred), scores +5.
    """
    from sacred import Experiment

    evaluate = Experiment("maskcl_evaluate", save_git_info=False)
    evaluate.add_config(copy.deepcopy(BASE_CONFIG))

    @evaluate.main
    def _evaluate(_run, _config):
        if _config.get("train", {}).get("lr") == 0.123:
            raise RuntimeError("planned failure")
        shift = 5.0 if _config["eps"] != BASE_CONFIG["eps"] else 0.0
        result = metrics_of(_config["method"], _config["seed"], shift)
        _run.info.update(
            {
                "metrics": result,
                "git_commit": "0123abc",
                "git_dirty": False,
                "data_hash": "d41d8cd98f00b204e9800998ecf8427e.dir",
                "dvc_exp_name": "exp-one",
                "device": "cpu",
                "tags": ["paper", _config["method"]],
            }
        )
        return result

    options = {"--loglevel": "ERROR", "--capture": "no"}
    for method in METHODS:
        for seed in SEEDS:
            evaluate.observers[:] = [observer_factory()]
            io = {"checkpoint": f"generated/{method}_{seed}/last.pt"}  # differs per run, like the pipeline's paths
            evaluate.run(config_updates={"method": method, "seed": seed, "io": io}, options=options)
    if extra_eps is not None:
        for seed in SEEDS[:2]:
            evaluate.observers[:] = [observer_factory()]
            evaluate.run(config_updates={"method": "maskcl", "seed": seed, "eps": extra_eps}, options=options)
    if with_failed:
        evaluate.observers[:] = [observer_factory()]
        try:
            evaluate.run(config_updates={"method": "maskcl", "seed": 9, "train": {"lr": 0.123}}, options=options)
        except RuntimeError:
            pass
    if with_train:
        train = Experiment("maskcl_train", save_git_info=False)
        train.add_config(copy.deepcopy(BASE_CONFIG))

        @train.main
        def _train(_run, _config):
            for epoch in range(4):
                _run.log_scalar("train.loss", 5.0 - epoch, epoch)
                _run.log_scalar("cluster.n_clusters", 20 + 3 * epoch + _config["seed"], epoch)
                _run.log_scalar("cluster.n_unclustered", 50 - 10 * epoch, epoch)
                _run.log_scalar("test.cc.mAP", 10.0 * epoch + _config["seed"], epoch)
                _run.log_scalar("test.cc.rank1", 12.0 * epoch + _config["seed"], epoch)
            _run.info.update({"git_commit": "0123abc", "tags": ["paper", _config["method"]]})
            return None

        for method in METHODS:
            train.observers[:] = [observer_factory()]
            train.run(config_updates={"method": method, "seed": 1}, options=options)
