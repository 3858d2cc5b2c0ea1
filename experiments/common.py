"""What the train and evaluate experiments share: the logger adapter, provenance, result files.

Rules that keep Sacred records readable by MongoDB and by the report (anchors §2.6): every value
handed to Sacred is a plain ``float``/``int``/``str`` (torch tensors are not converted by Sacred),
and no dict key holds a ``.`` or starts with ``$`` (MongoDB rewrites those).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from experiments.observers import MaskclMongoObserver, file_store_key

log = logging.getLogger(__name__)

RUN_MARKER = "sacred_run.json"  # written by the train experiment next to last.pt: which run trained it
DVC_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "DVC_ROOT")
SYNTH_STAGE_OUT = "generated/synthetic"


def plain_value(value: Any) -> Any:
    """A JSON/BSON-safe copy: tensors and numpy scalars → Python numbers, keys without dots."""
    if isinstance(value, Mapping):
        return {safe_key(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):  # torch.Tensor / numpy scalar of one element
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def safe_key(key: Any) -> str:
    """A MongoDB-safe dict key: ``.`` → ``_``, a leading ``$`` → ``_``."""
    text = str(key).replace(".", "_")
    return "_" + text[1:] if text.startswith("$") else text


def number(value: Any) -> float | int:
    """``float`` for measurements, ``int`` kept for counts (``n_queries``)."""
    value = plain_value(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return float(value)


def plain_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """``{protocol: {metric: number}}`` with plain numbers (what evaluate_features returns)."""
    return {safe_key(p): {safe_key(k): number(v) for k, v in values.items()} for p, values in metrics.items()}


class SacredRunLogger:
    """The engine's ``RunLogger`` (``log_scalar``/``log_info``) writing to a Sacred run.

    It also keeps every scalar by step, so the stage can write its per-epoch CSV for DVC plots
    without asking the engine for a history format. Only the main process calls it; DataLoader
    workers never see ``_run``.
    """

    def __init__(self, run: Any) -> None:
        self.run = run
        self.rows: dict[int, dict[str, float]] = {}

    def log_scalar(self, name: str, value: Any, step: int) -> None:
        value, step = float(plain_value(value)), int(step)
        self.run.log_scalar(str(name), value, step)
        self.rows.setdefault(step, {})[str(name)] = value

    def log_info(self, key: str, value: Any) -> None:
        self.run.info[safe_key(key)] = plain_value(value)


# Tracked files the pipeline itself rewrites while it runs: DVC writes dvc.lock after each stage and
# the stages write their metrics/plots files (git-tracked, `cache: false`) under results/;
# `dvc exp run -S` edits params.yaml (the run's config, which Sacred records in full). A change
# there does not make the *code* differ from the commit, so it does not make a run dirty.
PIPELINE_PRODUCTS = ("dvc.lock", "params.yaml", "results/")


def git_info(root: Path) -> dict[str, Any]:
    """Commit, dirty flag and the changed tracked paths (untracked files ignored, like Sacred).

    ``dirty`` is True when a tracked file other than the pipeline's own products
    (:data:`PIPELINE_PRODUCTS`) differs from the commit; ``changed`` lists every changed tracked
    path, products included, so nothing is hidden. Empty values outside git.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = (git("rev-parse", "--verify", "--quiet", "HEAD") or "").strip()
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    if status is None:
        return {"commit": commit, "dirty": None, "changed": []}
    changed = [line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if line.strip()]
    dirty = any(not _is_pipeline_product(path) for path in changed)
    return {"commit": commit, "dirty": dirty, "changed": changed}


def _is_pipeline_product(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PIPELINE_PRODUCTS)


def data_hashes(root: Path) -> dict[str, Any]:
    """The DVC hashes of the inputs: ``data.dvc`` (user datasets) and the synthetic set, an output
    of the ``synth`` stage recorded in ``dvc.lock`` (absent before the first ``dvc repro``; DVC
    writes each stage's lock entry as soon as that stage finishes, so a later stage reads it)."""
    hashes: dict[str, Any] = {}
    try:
        data_dvc = yaml.safe_load((root / "data.dvc").read_text()) or {}
        out = (data_dvc.get("outs") or [{}])[0]
        hashes["data_dvc"] = {"md5": out.get("md5"), "size": out.get("size"), "nfiles": out.get("nfiles")}
    except (OSError, yaml.YAMLError, AttributeError, IndexError):
        pass
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
        for stage in (lock.get("stages") or {}).values():  # the stage's name does not matter, its output does
            for out in (stage or {}).get("outs", []) or []:
                if out.get("path") == SYNTH_STAGE_OUT:
                    hashes["synthetic"] = {"md5": out.get("md5"), "size": out.get("size"), "nfiles": out.get("nfiles")}
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return hashes


def dvc_env() -> dict[str, str]:
    """The variables DVC sets for a stage (``dvc exp run`` names the experiment and its baseline)."""
    return {name: os.environ[name] for name in DVC_ENV if name in os.environ}


def device_info(requested: str) -> dict[str, Any]:
    """The device asked for and, if the engine already imported torch, what is there."""
    info: dict[str, Any] = {"requested": requested, "platform": platform.platform()}
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = bool(torch.cuda.is_available())
        info["cuda_available"] = cuda
        info["torch"] = str(torch.__version__)
        if cuda:
            info["cuda_device"] = str(torch.cuda.get_device_name(0))
    return info


def data_hash(hashes: dict[str, Any], dataset_name: str) -> str:
    """The one hash a result is keyed by: the synthetic stage output or the ``data.dvc`` folder."""
    key = "synthetic" if dataset_name == "synthetic" else "data_dvc"
    return str((hashes.get(key) or {}).get("md5") or "")


def device_name(details: dict[str, Any]) -> str:
    """A short device string (the engine may overwrite it with the device it really used)."""
    if details.get("cuda_available") and details.get("requested") != "cpu":
        return f"cuda ({details.get('cuda_device', '?')})"
    return "cpu" if "cuda_available" in details or details.get("requested") == "cpu" else details.get("requested", "")


def provenance(root: Path, cfg: Any) -> dict[str, Any]:
    """Everything ``_run.info`` records about where a run comes from.

    Flat keys (``git_commit``, ``git_dirty``, ``data_hash``, ``device``, ``dvc_exp_name`` …) are
    what the report reads; the ``*_details`` entries keep the rest.
    """
    git = git_info(root)
    hashes = data_hashes(root)
    device = device_info(cfg.train.device)
    info: dict[str, Any] = {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "git_changed": git["changed"],
        "data_hash": data_hash(hashes, cfg.dataset.name),
        "data_hashes": hashes,
        "dataset": cfg.dataset.name,
        "dataset_details": {"root": cfg.dataset.root, "mask_root": cfg.dataset.mask_root},
        "method": cfg.method,
        "seed": cfg.seed,
        "device": device_name(device),
        "device_details": device,
        "command_line": " ".join(sys.argv),
    }
    info.update({name.lower(): value for name, value in dvc_env().items()})
    return info


def write_json(path: Path, data: Any) -> None:
    """Atomic write (a killed stage never leaves half a metrics file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(plain_value(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict[str, Any]], first: str = "epoch", sort: bool = True) -> None:
    """Rows → CSV with ``first`` as the first column and the other columns sorted (or in first-seen
    order with ``sort=False``); missing cells empty."""
    seen = list(dict.fromkeys(key for row in rows for key in row if key != first))
    columns = sorted(seen) if sort else seen
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[first, *columns], restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    os.replace(tmp, path)


# ---- DVC files: metrics only, byte-identical when the results are (DESIGN §3) -----------------
# Run ids, commits, counts and timings live in the Sacred record (which also holds each file's
# md5), never in a DVC output: dvc.lock and results/ then change only when a number does.
HEADLINE_METRICS = ("mAP", "rank1")
PROTOCOL_METRICS = ("mAP", "rank1", "rank5", "rank10", "rank20")
DECIMALS = 4  # of a percentage: far below any difference that means something
VOLATILE_COLUMNS = ("sacred_run_id",)  # and any column ending in "time_s" (wall-clock timings)


def expand_path(template: str, method: str) -> str:
    """An ``io`` path with ``{method}`` filled in (``results/{method}/metrics.json``)."""
    return str(template).replace("{method}", method)


def headline_metrics(method: str, metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The DVC metrics file of one evaluation: ``{method: {protocol: {mAP, rank1}}}``.

    Only the dataset's first protocol (its clothes-changing one: ``cc``, ``ltcc_cc_maskcl`` on
    real LTCC, ``prcc_cc``) and two numbers, keyed by method so that ``dvc exp show`` names each
    column once (``maskcl.cc.mAP``; a key repeated across files gets the file path as prefix) and
    ``--only-changed`` fits a terminal. Every protocol and rank-k is in ``protocols.csv``.
    """
    protocol = next(iter(metrics), None)
    if protocol is None:
        return {method: {}}
    values = metrics[protocol]
    return {method: {protocol: {k: round(float(values[k]), DECIMALS) for k in HEADLINE_METRICS if k in values}}}


def protocol_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per protocol with mAP and rank-1/5/10/20 (the DVC plot ``protocols.csv``); no counts."""
    return [
        {"protocol": protocol, **{k: round(float(v[k]), DECIMALS) for k in PROTOCOL_METRICS if k in v}}
        for protocol, v in metrics.items()
    ]


def is_volatile(column: str) -> bool:
    """Columns that differ between two runs of identical results (ids, wall-clock timings)."""
    return column in VOLATILE_COLUMNS or column.endswith("time_s")


def split_epoch_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, test rows) for DVC plots, timings and ids dropped.

    Training rows hold every epoch's loss / clusters; test rows only the evaluation epochs, with
    ``<protocol>_mAP`` and ``<protocol>_rank1`` (a blank cell in a CSV plot is no number).
    """
    train_rows, test_rows = [], []
    for row in rows:
        train = {k: v for k, v in row.items() if not k.startswith("test_") and not is_volatile(k)}
        test = {
            k[len("test_"):]: round(float(v), DECIMALS)
            for k, v in row.items()
            if k.startswith("test_") and k.rsplit("_", 1)[-1] in HEADLINE_METRICS
        }
        train_rows.append(train)
        if test:
            test_rows.append({"epoch": row["epoch"], **test})
    return train_rows, test_rows


def output_digests(paths: Mapping[str, str | Path]) -> dict[str, Any]:
    """``{name: {path, md5, size}}`` of the files that exist: the Sacred record's link to the DVC
    outputs (the report finds the runs of an experiment by these md5s)."""
    return {name: file_digest(Path(path)) for name, path in paths.items() if path and Path(path).is_file()}


def code_digest(root: Path | None = None) -> str:
    """sha256 of the training code (``maskcl/**/*.py`` and ``experiments/*.py``).

    A checkpoint is resumed only by the code that wrote it: after a change to the library (a
    loss fix, say) DVC re-runs the stage, and continuing the old run would report stale results.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    files = sorted([*(root / "maskcl").rglob("*.py"), *(root / "experiments").glob("*.py")])
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_digest(path: Path) -> dict[str, Any]:
    """md5 (DVC's hash) and size of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "md5": digest.hexdigest(), "size": path.stat().st_size}


def dvc_name(metric: str) -> str:
    """Sacred's dotted metric name → the DVC column name (``test.cc.mAP`` → ``test_cc_mAP``)."""
    return metric.replace(".", "_")


class Timer:
    """Wall-clock timings for ``info["timings"]``: ``with timer.section("fit"): ...``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def section(self, name: str) -> "_Section":
        return _Section(self, name)


class _Section:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timer.timings[f"{self.name}_s"] = round(time.perf_counter() - self.start, 3)


def run_identity(run: Any) -> dict[str, Any]:
    """Which store records this run: the file-store key (sync uses it) and the MongoDB id."""
    run_id = int(run._id) if str(run._id).isdigit() else run._id  # the file store's ids are "1", "2" …
    identity: dict[str, Any] = {"sacred_run_id": run_id}
    for observer in run.observers:
        if isinstance(observer, MaskclMongoObserver) and observer.run_entry:
            identity["mongo_run_id"] = observer.run_entry.get("_id")
        elif hasattr(observer, "basedir") and run._id is not None:
            identity.update(file_store_key(observer.basedir, run._id, run.host_info.get("hostname")))
    return identity
