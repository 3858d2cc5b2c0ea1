"""Sacred experiment ``maskcl_train``: one training run = one Sacred run (the DVC ``train`` stage).

Run it as::

    python -m experiments.train with params.yaml                      # what `dvc repro` runs
    python -m experiments.train with params.yaml eps=0.55 train.epochs=2
    python -m experiments.train print_config with params.yaml
    torchrun --nproc_per_node=4 experiments/train.py with params.yaml train.batch_size=64   # DDP

Under ``torchrun`` every process runs this module; rank 0 alone attaches observers, records the
run and writes the files below, the others only run the engine (``train.batch_size`` is the
global batch: :mod:`maskcl.engine.distributed`).

The main function is thin: Sacred config → typed :class:`~maskcl.config.Config` →
``maskcl.engine.fit(cfg, out_dir, logger)``. Per epoch the engine logs ``train.loss``,
``cluster.n_clusters`` … and every ``eval_step`` epochs ``test.<protocol>.mAP``/``rank1`` through
:class:`~experiments.common.SacredRunLogger`. ``{method}`` in an ``io`` path is the run's method
(the pipeline trains each method into its own folder). The stage then writes DVC plots files
that hold numbers only — no run id, commit or timing, so a re-run with identical results leaves
them (and ``dvc.lock``) byte-identical:

* ``results/<method>/epochs.csv``: one row per epoch (``train_loss``, ``cluster_n_clusters`` …),
* ``results/<method>/test_epochs.csv``: one row per evaluation epoch (``cc_mAP``, ``cc_rank1`` …).

The Sacred record holds what identifies the run instead: ids, commit, timings, and the md5 of
each output (``info.outputs``), which is how a DVC result is traced back to its run (DVC's run
cache can restore a stage without running it: the restored file has the md5 of the run that
made it). The checkpoint folder (``io.out_dir``, a DVC ``persist: true`` output) is never a
Sacred artifact; its ``sacred_run.json`` marker is in ``.dvcignore``, outside DVC's hash.

Resume (kill -9, power loss): ``fit`` resumes from ``out_dir/last.pt``. This module writes
``out_dir/sacred_run.json`` (run ids, config, data hash) at the start of each run; the next run
resumes only if that config, data hash and training code are identical — a checkpoint left by another config
(DVC keeps the persisted folder across ``dvc exp run -S eps=...``) is set aside as
``<out_dir>.superseded-run<id>``, never continued and never deleted.
A resuming run records ``info.resumed_from_run`` and marks the dead run INTERRUPTED in the file
store (and MongoDB), which otherwise stays RUNNING with a stale heartbeat forever.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from sacred import Experiment

from experiments.common import (
    RUN_MARKER,
    SacredRunLogger,
    code_digest,
    device_info,
    Timer,
    dvc_name,
    expand_path,
    number,
    output_digests,
    plain_metrics,
    plain_value,
    provenance,
    run_identity,
    split_epoch_rows,
    write_csv,
    write_json,
)
from experiments.config import build_config, configure, has_git_commit, run_commandline
from experiments.observers import MaskclMongoObserver, is_rank_zero
from maskcl.config import Config, config_changes, flatten_dict

log = logging.getLogger("experiments.train")  # not __main__ under `python -m`

NAME = "maskcl_train"
CHECKPOINT = "last.pt"
# keys that may differ between a killed attempt and its resumption (speed, paths, evaluation);
# anything else (eps, epochs, lr …) changes the result, so the old checkpoint is discarded
RESUME_IGNORES = ("train.workers", "train.device", "train.eval_step", "dataset.root", "dataset.mask_root", "eval.")
# the engine's history keys → the names it logs (contract); others keep their own name
HISTORY_NAMES = {
    "loss": "train.loss",
    "loss_rgb": "train.loss_rgb",
    "loss_mask": "train.loss_mask",
    "loss_fusion": "train.loss_fusion",
    "xview_instance": "train.xview_instance",  # −cos(g_rgb, f_mask): inside loss_mask, logged alone
    "xview_prototype": "train.xview_prototype",  # −cos(g_rgb, mask prototype of the sample's cluster)
    "n_clusters": "cluster.n_clusters",
    "n_unclustered": "cluster.n_unclustered",
    "cluster_time_s": "cluster.time_s",
}

ex = configure(
    Experiment(NAME, save_git_info=has_git_commit()),
    {
        "out_dir": "generated/train/{method}",  # checkpoints (DVC out, persist: true); resumed from last.pt
        "metrics": "",  # optional training figures {method: {train: {loss, clusters}}} ("" = none)
        "epochs": "results/{method}/epochs.csv",  # DVC plots: one row per epoch (loss, clusters)
        "test_epochs": "results/{method}/test_epochs.csv",  # DVC plots: mAP/rank-1 per evaluation epoch
    },
)


@ex.main
def main(_config: dict[str, Any], _run: Any) -> dict[str, dict[str, float]]:
    """Train; returns the final metrics ``{protocol: {mAP, rank1, ...}}`` (Sacred's result)."""
    cfg, io = build_config(_config)
    if not is_rank_zero():
        return follower_run(cfg, io)
    return train_run(cfg, io, _run)


def follower_run(cfg: Config, io: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A ``torchrun`` process other than rank 0: train its share, record nothing, write nothing.

    It reaches the engine's first collective only after rank 0 has prepared ``out_dir`` (rank 0
    decides resume versus fresh start before it calls ``fit``), so both see the same checkpoint.
    """
    from maskcl import engine

    out_dir = Path(expand_path(io["out_dir"], cfg.method))
    return plain_metrics(final_metrics(engine.fit(cfg, out_dir, engine.NullLogger())))


def train_run(cfg: Config, io: dict[str, Any], run: Any) -> dict[str, dict[str, float]]:
    """The body of ``main`` (split out so tests can call it with a stand-in run).

    It holds ``out_dir``'s lock (:mod:`maskcl.engine.lock`) from before the resume decision until
    the metrics are written, so a second training into the folder refuses at once, naming the PID.
    """
    from maskcl.engine.lock import train_lock

    with train_lock(Path(expand_path(io["out_dir"], cfg.method))):
        return _train_locked(cfg, io, run)


def _train_locked(cfg: Config, io: dict[str, Any], run: Any) -> dict[str, dict[str, float]]:
    from maskcl import engine

    out_dir = Path(expand_path(io["out_dir"], cfg.method))
    identity = run_identity(run)
    run.info.update(provenance(Path.cwd(), cfg))
    run.info.update(identity)
    marker = _prepare_out_dir(out_dir, cfg, run, identity)
    write_json(out_dir / RUN_MARKER, marker)

    logger = SacredRunLogger(run)
    timer = Timer()
    started = dt.datetime.now(dt.timezone.utc)
    with timer.section("fit"):
        result = engine.fit(cfg, out_dir, logger)
    run.info["timings"] = {**timer.timings, "started": started.isoformat()}
    run.info["device_details"] = device_info(cfg.train.device)  # torch is imported by now: CUDA name

    final = plain_metrics(final_metrics(result))
    rows = epoch_rows(logger.rows, result)
    train_rows, test_rows = split_epoch_rows(rows)
    paths = {name: expand_path(io.get(name) or "", cfg.method) for name in ("metrics", "epochs", "test_epochs")}
    if paths["epochs"]:
        write_csv(Path(paths["epochs"]), train_rows)
    if paths["test_epochs"]:
        write_csv(Path(paths["test_epochs"]), test_rows)
    if paths["metrics"]:
        write_json(Path(paths["metrics"]), training_figures(cfg.method, rows))
    for name in ("epochs", "test_epochs", "metrics"):
        if paths[name] and Path(paths[name]).is_file():
            run.add_artifact(paths[name], name=Path(paths[name]).name if name != "metrics" else "train_metrics.json")
    # what identifies this run lives here, in the record, not in the DVC files
    summary = {
        "dataset": cfg.dataset.name,
        "method": cfg.method,
        "seed": cfg.seed,
        "sacred_run_id": identity["sacred_run_id"],
        "git_commit": run.info.get("git_commit", ""),
        "resumed_from_run": run.info.get("resumed_from_run"),
        "epochs": len(rows),
        "last_epoch": {k: v for k, v in (rows[-1] if rows else {}).items() if k != "epoch"},
        "protocols": final,
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_json(Path(tmp) / "train_summary.json", summary)
        run.add_artifact(str(Path(tmp) / "train_summary.json"), name="train_summary.json")
    run.info["outputs"] = output_digests({"checkpoint": out_dir / CHECKPOINT, **paths})
    return final


def training_figures(method: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A few numbers of the last epoch for a DVC metrics file: loss and cluster counts."""
    last = rows[-1] if rows else {}
    keys = {"train_loss": "loss", "cluster_n_clusters": "clusters", "cluster_n_unclustered": "unclustered"}
    return {method: {"train": {short: round(float(last[k]), 4) for k, short in keys.items() if k in last}}}


def final_metrics(result: Any) -> dict[str, dict[str, Any]]:
    """``{protocol: {...}}`` from whatever ``fit`` returns (a TrainResult or a plain dict)."""
    if result is None:
        return {}
    for name in ("metrics", "final_metrics", "final"):
        value = getattr(result, name, None)
        if isinstance(value, dict):
            return value
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if isinstance(v, dict)}
    return {}


def epoch_rows(logged: dict[int, dict[str, float]], result: Any) -> list[dict[str, Any]]:
    """One row per epoch: what this run logged, completed by the engine's history (epochs of an
    earlier, resumed attempt that this process never saw)."""
    rows: dict[int, dict[str, Any]] = {step: {dvc_name(k): v for k, v in values.items()} for step, values in logged.items()}
    history = getattr(result, "history", None)
    if isinstance(history, list):
        for entry in history:
            if not isinstance(entry, dict) or "epoch" not in entry:
                continue
            step = int(entry["epoch"])
            row = rows.setdefault(step, {})
            for key, value in flatten_dict(entry).items():
                if key != "epoch" and isinstance(plain_value(value), (int, float)):
                    row.setdefault(dvc_name(HISTORY_NAMES.get(key, key)), number(value))
    return [{"epoch": step, **rows[step]} for step in sorted(rows)]


def _prepare_out_dir(out_dir: Path, cfg: Config, run: Any, identity: dict[str, Any]) -> dict[str, Any]:
    """Decide between resume and a fresh start; returns the marker of this run."""
    marker = {
        **{k: plain_value(v) for k, v in identity.items()},
        "config": cfg.to_dict(),
        "data_hash": run.info.get("data_hash", ""),
        "code_digest": code_digest(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    checkpoint = out_dir / CHECKPOINT
    previous = _read_marker(out_dir / RUN_MARKER)
    if checkpoint.is_file():
        if previous is None:
            log.info("%s has no %s: the engine decides whether it can resume", checkpoint, RUN_MARKER)
        elif (
            not config_changes(previous.get("config") or {}, marker["config"], RESUME_IGNORES)
            and previous.get("data_hash") == marker["data_hash"]
            and previous.get("code_digest") == marker["code_digest"]
        ):
            run.info["resumed_from_run"] = {
                k: previous.get(k) for k in ("sacred_run_id", "mongo_run_id", "file_store_id", "file_store_host", "file_store_dir")
                if previous.get(k) is not None
            }
            log.info("resuming from %s, left by Sacred run %s", checkpoint, previous.get("sacred_run_id"))
            mark_interrupted(previous, run, identity)
        else:
            changes = config_changes(previous.get("config") or {}, marker["config"], RESUME_IGNORES)
            if previous.get("data_hash") != marker["data_hash"]:
                changes.append(f"data hash {previous.get('data_hash')!r} → {marker['data_hash']!r}")
            if previous.get("code_digest") != marker["code_digest"]:
                changes.append("the training code (maskcl/, experiments/) changed")
            # moved aside, never deleted: a killed run's checkpoint is in no DVC cache yet
            kept = _set_aside(out_dir, previous.get("sacred_run_id"))
            log.warning(
                "%s was left by Sacred run %s with other settings (%s); starting from scratch "
                "(the old folder is kept as %s; delete it when you no longer need it)",
                checkpoint, previous.get("sacred_run_id"), "; ".join(changes[:5]), kept,
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    return marker


def _set_aside(out_dir: Path, run_id: Any) -> Path:
    """Rename ``out_dir`` to a free sibling ``<name>.superseded-run<id>[-k]`` and return it."""
    base = out_dir.with_name(f"{out_dir.name}.superseded-run{run_id if run_id is not None else 'unknown'}")
    target, k = base, 1
    while target.exists():
        target, k = base.with_name(f"{base.name}-{k}"), k + 1
    out_dir.rename(target)
    from maskcl.engine.lock import LOCK_NAME

    (target / LOCK_NAME).unlink(missing_ok=True)  # ours, held: the new out_dir gets its own lock
    return target


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mark_interrupted(previous: dict[str, Any], run: Any, identity: dict[str, Any]) -> None:
    """Mark the earlier attempt INTERRUPTED if its record still says RUNNING (it was killed).

    Only one process trains into an ``out_dir`` (DVC holds the repo lock), so a RUNNING record
    whose checkpoint we are about to resume belongs to a dead process.
    """
    note = f"killed: resumed by Sacred run {identity.get('sacred_run_id')}"
    run_dir = previous.get("file_store_dir")
    if run_dir and previous.get("file_store_id") is not None:
        run_json = Path(run_dir) / str(previous["file_store_id"]) / "run.json"
        try:
            record = json.loads(run_json.read_text())
        except (OSError, ValueError):
            record = None
        if record is not None and record.get("status") == "RUNNING":
            record.update(status="INTERRUPTED", stop_time=record.get("heartbeat") or record.get("start_time"),
                          interrupted=note, resumed_by=identity.get("sacred_run_id"))
            write_json(run_json, record)
            log.info("marked Sacred run %s INTERRUPTED (%s)", previous["file_store_id"], note)
    mongo_id = previous.get("mongo_run_id")
    if mongo_id is None:
        return
    for observer in run.observers:
        if isinstance(observer, MaskclMongoObserver):
            try:
                observer.runs.update_one(
                    {"_id": mongo_id, "status": "RUNNING", "info.file_store_id": previous.get("file_store_id")},
                    {"$set": {"status": "INTERRUPTED", "interrupted": note}},
                )
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop training
                log.warning("could not mark MongoDB run %s INTERRUPTED: %s", mongo_id, type(exc).__name__)


if __name__ == "__main__":
    sys.exit(run_commandline(ex, None))
