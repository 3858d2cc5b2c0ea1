"""Sacred experiment ``maskcl_evaluate``: score a checkpoint on every protocol (the DVC ``evaluate`` stage).

Run it as::

    python -m experiments.evaluate with params.yaml
    python -m experiments.evaluate with params.yaml io.checkpoint=generated/train/last.pt

Config → ``maskcl.engine.evaluate_checkpoint(cfg, checkpoint)`` → ``{protocol: {mAP, rank1, ...}}``,
which is the run's result, ``info["metrics"]`` and ``results/metrics.json`` (the DVC metrics file)::

    {"dataset", "method", "seed", "sacred_run_id", "git_commit", "train_sacred_run_id",
     "protocols": {protocol: {"mAP", "rank1", "rank5", "rank10", "rank20", "n_queries", "n_skipped"}}}

This experiment logs no scalar series on purpose: Sacred's MongoObserver keeps ``info["metrics"]``
as its own list of metric references as soon as a run logs one, which would clash with the
protocol dict stored there.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from sacred import Experiment

from experiments.common import RUN_MARKER, Timer, device_info, device_name, file_digest, plain_metrics, provenance, run_identity, write_json
from experiments.config import build_config, configure, has_git_commit, run_commandline
from maskcl.config import Config
from maskcl.errors import CheckpointError

log = logging.getLogger("experiments.evaluate")  # not __main__ under `python -m`

NAME = "maskcl_evaluate"

ex = configure(
    Experiment(NAME, save_git_info=has_git_commit()),
    {
        "checkpoint": "generated/train/last.pt",  # written by the train stage
        "metrics": "results/metrics.json",  # DVC metrics of the pipeline
        "features": "results/features.npz",  # query/gallery features for `maskcl visualize` ("" = none)
    },
)


@ex.main
def main(_config: dict[str, Any], _run: Any) -> dict[str, dict[str, float]]:
    """Evaluate; returns ``{protocol: {mAP, rank1, ...}}`` (Sacred's result)."""
    cfg, io = build_config(_config)
    return evaluate_run(cfg, io, _run)


def evaluate_run(cfg: Config, io: dict[str, Any], run: Any) -> dict[str, dict[str, float]]:
    """The body of ``main`` (split out so tests can call it with a stand-in run)."""
    from maskcl import engine

    checkpoint = Path(io["checkpoint"])
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint '{checkpoint}' does not exist; run the train stage first (dvc repro train)")
    identity = run_identity(run)
    run.info.update(provenance(Path.cwd(), cfg))
    run.info.update(identity)
    train_run = _train_run(checkpoint.parent / RUN_MARKER)
    if train_run:
        run.info["train_run"] = train_run
    run.info["outputs"] = {"checkpoint": file_digest(checkpoint)}

    timer = Timer()
    with timer.section("evaluate"):
        features = io.get("features") or None
        metrics = plain_metrics(engine.evaluate_checkpoint(cfg, checkpoint, features_out=features))
    run.info["timings"] = timer.timings
    run.info["device_details"] = device_info(cfg.train.device)  # torch is imported by now: CUDA name
    run.info["device"] = device_name(run.info["device_details"])
    run.info["metrics"] = metrics

    summary = {
        "dataset": cfg.dataset.name,
        "method": cfg.method,
        "seed": cfg.seed,
        "sacred_run_id": identity["sacred_run_id"],
        "git_commit": run.info.get("git_commit", ""),
        "train_sacred_run_id": train_run.get("sacred_run_id"),
        "protocols": metrics,
    }
    path = Path(io["metrics"])
    write_json(path, summary)
    run.add_artifact(str(path), name="eval_metrics.json")  # "metrics.json" is the file store's own
    for protocol, values in metrics.items():
        log.info("%s: %s", protocol, ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    return metrics


def _train_run(marker: Path) -> dict[str, Any]:
    """Which Sacred run trained the checkpoint (from the marker the train experiment writes)."""
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("sacred_run_id", "mongo_run_id", "file_store_id", "file_store_host", "file_store_dir")
    return {k: data[k] for k in keys if data.get(k) is not None}


if __name__ == "__main__":
    sys.exit(run_commandline(ex, None))
