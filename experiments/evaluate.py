"""Sacred experiment ``maskcl_evaluate``: score a checkpoint on every protocol (the DVC ``evaluate`` stage).

Run it as::

    python -m experiments.evaluate with params.yaml                  # method from params.yaml
    python -m experiments.evaluate with params.yaml method=rgb       # what the DVC stage evaluate@rgb runs
    python -m experiments.evaluate with params.yaml io.checkpoint=generated/train/maskcl/last.pt

Config → ``maskcl.engine.evaluate_checkpoint(cfg, checkpoint)`` → ``{protocol: {mAP, rank1, ...}}``,
which is the run's result and ``info["metrics"]`` (with the query counts). ``{method}`` in an
``io`` path is the run's method. The DVC files hold numbers only, so identical results give
byte-identical files (and an unchanged ``dvc.lock``):

* ``results/<method>/metrics.json`` (DVC metrics): ``{method: {protocol: {"mAP", "rank1"}}}`` for
  the dataset's first (clothes-changing) protocol — see :func:`experiments.common.headline_metrics`;
* ``results/<method>/protocols.csv`` (DVC plot): every protocol's mAP and rank-1/5/10/20;
* ``results/<method>/features.npz`` (DVC out): query/gallery features for ``maskcl visualize``.

Run ids, the commit and timings are in the Sacred record, with the md5 of each of these files
(``info.outputs``); the train run is found from the checkpoint marker or, when DVC restored the
checkpoint from its cache, by the checkpoint's md5 among the train runs of the file store.

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

from experiments.common import (
    RUN_MARKER,
    Timer,
    device_info,
    device_name,
    expand_path,
    file_digest,
    headline_metrics,
    output_digests,
    plain_metrics,
    protocol_rows,
    provenance,
    run_identity,
    write_csv,
    write_json,
)
from experiments.config import build_config, configure, has_git_commit, run_commandline
from maskcl.config import Config
from maskcl.errors import CheckpointError
from maskcl.eval.summary import format_metrics

log = logging.getLogger("experiments.evaluate")  # not __main__ under `python -m`

NAME = "maskcl_evaluate"

ex = configure(
    Experiment(NAME, save_git_info=has_git_commit()),
    {
        "checkpoint": "generated/train/{method}/last.pt",  # written by the train stage
        "metrics": "results/{method}/metrics.json",  # DVC metrics: the headline protocol's mAP, rank-1
        "protocols": "results/{method}/protocols.csv",  # DVC plot: every protocol, mAP and rank-k ("" = none)
        "features": "results/{method}/features.npz",  # query/gallery features for `maskcl visualize` ("" = none)
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

    paths = {name: expand_path(io.get(name) or "", cfg.method) for name in ("checkpoint", "metrics", "protocols", "features")}
    checkpoint = Path(paths["checkpoint"])
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint '{checkpoint}' does not exist; run the train stage first (dvc repro train@{cfg.method})")
    identity = run_identity(run)
    run.info.update(provenance(Path.cwd(), cfg))
    run.info.update(identity)
    checkpoint_digest = file_digest(checkpoint)
    train_run = _train_run(checkpoint.parent / RUN_MARKER, checkpoint_digest["md5"])
    if train_run:
        run.info["train_run"] = train_run

    timer = Timer()
    with timer.section("evaluate"):
        features = paths["features"] or None
        metrics = plain_metrics(engine.evaluate_checkpoint(cfg, checkpoint, features_out=features))
    run.info["timings"] = timer.timings
    run.info["device_details"] = device_info(cfg.train.device)  # torch is imported by now: CUDA name
    run.info["device"] = device_name(run.info["device_details"])
    run.info["metrics"] = metrics

    if paths["metrics"]:
        write_json(Path(paths["metrics"]), headline_metrics(cfg.method, metrics))
        run.add_artifact(paths["metrics"], name="eval_metrics.json")  # "metrics.json" is the file store's own
    if paths["protocols"]:
        write_csv(Path(paths["protocols"]), protocol_rows(metrics), first="protocol", sort=False)
        run.add_artifact(paths["protocols"], name="protocols.csv")
    run.info["outputs"] = {"checkpoint": checkpoint_digest, **output_digests({k: v for k, v in paths.items() if k != "checkpoint"})}
    log.info("%s on %s, seed %s:\n%s", cfg.method, cfg.dataset.name, cfg.seed, format_metrics(metrics))
    return metrics


def _train_run(marker: Path, checkpoint_md5: str) -> dict[str, Any]:
    """Which Sacred run trained the checkpoint: the marker the train experiment writes beside it,
    else (DVC restored the folder from its cache, without the git- and DVC-ignored marker) the
    train run of the file store whose recorded checkpoint md5 matches."""
    keys = ("sacred_run_id", "mongo_run_id", "file_store_id", "file_store_host", "file_store_dir")
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        return {k: data[k] for k in keys if data.get(k) is not None}
    from experiments.observers import default_runs_dir

    found = find_train_run(default_runs_dir(), checkpoint_md5)
    return {k: found[k] for k in keys if found.get(k) is not None} if found else {}


def find_train_run(runs_dir: Path, checkpoint_md5: str) -> dict[str, Any] | None:
    """``info`` of the latest completed ``maskcl_train`` run whose checkpoint had this md5."""
    best: tuple[int, dict[str, Any]] | None = None
    for info_path in runs_dir.glob("*/info.json") if runs_dir.is_dir() else []:
        try:
            info = json.loads(info_path.read_text())
            run = json.loads((info_path.parent / "run.json").read_text())
        except (OSError, ValueError):
            continue
        digest = ((info.get("outputs") or {}).get("checkpoint") or {}).get("md5")
        if run.get("experiment", {}).get("name") == "maskcl_train" and run.get("status") == "COMPLETED" and digest == checkpoint_md5:
            number = int(info_path.parent.name) if info_path.parent.name.isdigit() else -1
            if best is None or number > best[0]:
                best = (number, info)
    return None if best is None else best[1]


if __name__ == "__main__":
    sys.exit(run_commandline(ex, None))
