"""Helpers of the tracking tests: a tiny stand-in engine and a runner for the Sacred experiments.

The stand-in logs what ``maskcl.engine.fit`` logs (dotted names, step = epoch number, numpy
scalars on purpose: the adapter must turn them into floats) and writes ``last.pt``; it takes
milliseconds, so the tests exercise Sacred, the observers and the files, not the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

FINAL = {
    "standard": {"mAP": 61.234567, "rank1": 70.5, "rank5": 80.25, "n_queries": 12, "n_skipped": 0},
    "cc": {"mAP": 41.1, "rank1": 45.0, "rank5": 60.125, "n_queries": 8, "n_skipped": 1},
}


def loss_at(epoch: int) -> float:
    return 3.0 / epoch + 0.123456789


class FakeEngine:
    """``fit``/``evaluate_checkpoint`` stand-ins; ``on_epoch(epoch)`` runs after each epoch."""

    def __init__(self) -> None:
        self.on_epoch: Callable[[int], None] | None = None
        self.fit_calls: list[dict[str, Any]] = []
        self.eval_calls: list[Path] = []

    def fit(self, cfg: Any, out_dir: Path, logger: Any = None) -> Any:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_file = out_dir / "last.pt"
        start = json.loads(state_file.read_text())["epoch"] if state_file.exists() else 0
        self.fit_calls.append({"eps": cfg.eps, "start": start, "out_dir": out_dir})
        history = json.loads((out_dir / "history.json").read_text()) if (out_dir / "history.json").exists() else []
        for epoch in range(start + 1, cfg.train.epochs + 1):
            entry: dict[str, Any] = {"epoch": epoch, "loss": loss_at(epoch), "n_clusters": 10 + epoch}
            logger.log_scalar("train.loss", np.float32(loss_at(epoch)), epoch)
            logger.log_scalar("cluster.n_clusters", np.int64(10 + epoch), epoch)
            if epoch % cfg.train.eval_step == 0 or epoch == cfg.train.epochs:
                entry["test"] = {"cc": {"mAP": 10.0 * epoch + 0.5}}
                logger.log_scalar("test.cc.mAP", 10.0 * epoch + 0.5, epoch)
            history.append(entry)
            state_file.write_text(json.dumps({"epoch": epoch}))
            (out_dir / "history.json").write_text(json.dumps(history))
            if self.on_epoch is not None:
                self.on_epoch(epoch)
        logger.log_info("device", "cpu (fake)")
        return SimpleNamespace(metrics=FINAL, history=history, epochs=cfg.train.epochs, checkpoint=state_file)

    def evaluate_checkpoint(self, cfg: Any, checkpoint: Path, features_out: Any = None) -> dict[str, dict[str, Any]]:
        self.eval_calls.append(Path(checkpoint))
        return {p: {k: (np.float32(v) if isinstance(v, float) else v) for k, v in m.items()} for p, m in FINAL.items()}


def small_updates(root: Path, **extra: Any) -> dict[str, Any]:
    """Config updates that keep every output under ``root``."""
    updates: dict[str, Any] = {
        "train": {"epochs": 3, "eval_step": 2},
        "io": {
            "out_dir": str(root / "generated" / "train"),
            "metrics": str(root / "results" / "train" / "metrics.json"),
            "epochs": str(root / "results" / "train" / "epochs.csv"),
            "test_epochs": str(root / "results" / "train" / "test_epochs.csv"),
        },
    }
    updates.update(extra)
    return updates


def eval_updates(root: Path) -> dict[str, Any]:
    return {
        "io": {
            "checkpoint": str(root / "generated" / "train" / "last.pt"),
            "metrics": str(root / "results" / "metrics.json"),
            "protocols": str(root / "results" / "protocols.csv"),
            "features": "",
        }
    }


def run_experiment(ex: Any, runs_dir: Path | None, updates: dict[str, Any], named: tuple[str, ...] = ()) -> Any:
    """Run a Sacred experiment with the observers ``observers_from_env`` picks (env decides Mongo)."""
    from experiments.observers import observers_from_env

    ex.observers[:] = observers_from_env(runs_dir) if runs_dir is not None else []
    try:
        return ex.run(config_updates=updates, named_configs=list(named))
    finally:
        ex.observers[:] = []


def file_run(runs_dir: Path, run_id: Any) -> dict[str, Any]:
    """run.json, config.json, info.json and metrics.json of a file-store run."""
    folder = runs_dir / str(run_id)
    read = lambda name: json.loads((folder / name).read_text()) if (folder / name).exists() else None  # noqa: E731
    return {"run": read("run.json"), "config": read("config.json"), "info": read("info.json"),
            "metrics": read("metrics.json"), "dir": folder}
