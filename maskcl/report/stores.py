"""Readers: Sacred file store, Sacred MongoDB, DVC experiments → lists of :class:`RunRecord`.

The shapes read are those sacred 0.8.7's observers and DVC 3.x write:

* File store (``FileStorageObserver``): ``<root>/<id>/run.json`` (experiment, status,
  start_time, result, ...), ``config.json``, ``info.json`` (only once ``_run.info`` is non-empty),
  ``metrics.json`` (``{name: {steps, values, timestamps}}``).
* MongoDB (``MongoObserver``): collection ``runs`` (``_id``, ``experiment.name``, ``status``,
  ``config``, ``info``, ``result``, ``start_time``) and ``metrics`` (``run_id``, ``name``,
  ``steps``, ``values``). Sacred itself keeps ``info["metrics"]`` in MongoDB as a *list* of
  ``{name, id}`` references to the ``metrics`` collection, so final metrics are read from
  ``result`` first and from ``info["metrics"]`` only when that is a ``{protocol: {...}}`` dict.
* DVC: ``dvc exp show --json`` = list of ``ExpState`` dicts (``rev``, ``name``, ``data`` =
  ``{params: {file: {data}}, metrics: {file: {data}}, ...}``, ``error``, ``experiments`` = list
  of ``ExpRange`` (``revs``: ExpState list, ``executor``: ``{state}``)); see
  ``dvc/repo/experiments/serialize.py``. The metrics files are the pipeline's
  ``results/<method>/metrics.json`` = ``{method: {protocol: {mAP, rank1}}}`` (one record per
  method), or a legacy ``results/metrics.json`` = ``{"dataset", "method", "protocols": {...}}``.

None of this imports sacred or dvc: the stores are read as data (DESIGN §2).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from maskcl.report.records import (
    COMPLETED,
    Provenance,
    ReportError,
    RunRecord,
    clean_metrics,
    flatten_dict,
    redact_text,
    redact_url,
)

log = logging.getLogger(__name__)

SACRED_EXPERIMENTS = ("maskcl_train", "maskcl_evaluate")
DVC_STATUS = {"success": COMPLETED, "queued": "QUEUED", "running": "RUNNING", "failed": "FAILED"}


# ---------------------------------------------------------------------------------------------
# Sacred: the pieces shared by the file store and MongoDB
# ---------------------------------------------------------------------------------------------


def _provenance_from_sacred(info: Mapping[str, Any], experiment: Mapping[str, Any]) -> Provenance:
    repos = experiment.get("repositories") or []
    repo = repos[0] if repos and isinstance(repos[0], Mapping) else {}
    commit = info.get("git_commit") or repo.get("commit")
    dirty = info.get("git_dirty", repo.get("dirty"))
    return Provenance(
        git_commit=None if commit is None else str(commit),
        git_dirty=None if dirty is None else bool(dirty),
        data_hash=_opt_str(info.get("data_hash")),
        dvc_exp=_opt_str(info.get("dvc_exp_name")),
        device=_opt_str(info.get("device")),
    )


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _sacred_record(
    *,
    run_id: str,
    source: str,
    run: Mapping[str, Any],
    config: Mapping[str, Any],
    info: Mapping[str, Any],
    curves: dict[str, list[tuple[int, float]]],
) -> RunRecord:
    experiment = run.get("experiment") or {}
    config = {k: v for k, v in config.items() if k != "__doc__"}
    metrics = clean_metrics(run.get("result"))
    if not metrics:
        metrics = clean_metrics(info.get("metrics"))
    tags = info.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    start = run.get("start_time")
    outputs = {
        str(name): str(value["md5"])
        for name, value in (info.get("outputs") or {}).items()
        if isinstance(value, Mapping) and value.get("md5")
    }
    train_run = info.get("train_run") or {}
    train_id = train_run.get("file_store_id", train_run.get("sacred_run_id")) if source == "sacred-file" else (
        train_run.get("mongo_run_id", train_run.get("sacred_run_id")))
    return RunRecord(
        run_id=str(run_id),
        source=source,
        experiment=str(experiment.get("name", "?")),
        status=str(run.get("status", "UNKNOWN")),
        config=dict(config),
        flat_config=flatten_dict(config),
        metrics=metrics,
        curves=curves,
        provenance=_provenance_from_sacred(info, experiment),
        tags=tuple(str(t) for t in tags),
        start_time=None if start is None else (start.isoformat() if hasattr(start, "isoformat") else str(start)),
        outputs=outputs,
        train_run_id=None if train_id is None else str(train_id),
    )


def _curves(raw: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    for name, series in raw.items():
        steps = series.get("steps") or []
        values = series.get("values") or []
        points = sorted((int(s), float(v)) for s, v in zip(steps, values) if isinstance(v, (int, float)))
        curves[str(name)] = points
    return curves


# ---------------------------------------------------------------------------------------------
# Sacred file store
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        # a run killed while writing leaves a truncated file: skip it rather than stop the report
        log.warning("skipping unreadable %s: %s", path, exc)
        return default


def read_file_store(root: str | Path, experiments: Sequence[str] | None = SACRED_EXPERIMENTS) -> list[RunRecord]:
    """Read every run directory under a Sacred ``FileStorageObserver`` root.

    Args:
        root: the folder given to ``FileStorageObserver`` (holds ``1/``, ``2/``, ``_sources/``).
        experiments: keep only these experiment names (``None``: all).
    """
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"Sacred file store '{root}' does not exist or is not a folder (expected runs/<id>/run.json)")
    records = []
    run_dirs = [p for p in root.iterdir() if p.is_dir() and (p / "run.json").is_file()]
    for run_dir in sorted(run_dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
        run = _read_json(run_dir / "run.json")
        if not isinstance(run, dict):
            continue
        name = (run.get("experiment") or {}).get("name")
        if experiments is not None and name not in experiments:
            continue
        records.append(
            _sacred_record(
                run_id=run_dir.name,
                source="sacred-file",
                run=run,
                config=_read_json(run_dir / "config.json", {}) or {},
                info=_read_json(run_dir / "info.json", {}) or {},
                curves=_curves(_read_json(run_dir / "metrics.json", {}) or {}),
            )
        )
    log.info("read %d run(s) from Sacred file store %s", len(records), root)
    return records


# ---------------------------------------------------------------------------------------------
# Sacred MongoDB
# ---------------------------------------------------------------------------------------------


def read_mongo(
    url: str,
    db_name: str,
    experiments: Sequence[str] | None = SACRED_EXPERIMENTS,
    *,
    timeout_ms: int = 5000,
    client: Any = None,
) -> list[RunRecord]:
    """Read Sacred runs and their metric series from MongoDB (``runs`` + ``metrics``).

    The URL's password never appears in logs or errors (:func:`redact_url`).
    """
    import pymongo
    import pymongo.errors

    shown = redact_url(url)
    own_client = client is None
    if own_client:
        try:
            client = pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms)
        except (pymongo.errors.PyMongoError, ValueError) as exc:
            raise ReportError(f"MongoDB URL {shown}: {redact_text(str(exc), url)}") from None
    try:
        db = client[db_name]
        query: dict[str, Any] = {}
        if experiments is not None:
            query["experiment.name"] = {"$in": list(experiments)}
        projection = {"captured_out": 0, "experiment.sources": 0, "host": 0}
        runs = list(db["runs"].find(query, projection))
        series: dict[Any, dict[str, Any]] = {}
        if runs:
            ids = [run["_id"] for run in runs]
            for doc in db["metrics"].find({"run_id": {"$in": ids}}, {"timestamps": 0}):
                series.setdefault(doc["run_id"], {})[doc["name"]] = doc
    except pymongo.errors.PyMongoError as exc:
        raise ReportError(
            f"MongoDB {shown} database '{db_name}': cannot read Sacred runs: {redact_text(str(exc), url)}"
        ) from None
    finally:
        if own_client:
            client.close()
    records = [
        _sacred_record(
            run_id=str(run["_id"]),
            source="sacred-mongo",
            run=run,
            config=run.get("config") or {},
            info=run.get("info") or {},
            curves=_curves(series.get(run["_id"], {})),
        )
        for run in sorted(runs, key=lambda r: str(r["_id"]).zfill(12))
    ]
    log.info("read %d run(s) from MongoDB %s/%s", len(records), shown, db_name)
    return records


# ---------------------------------------------------------------------------------------------
# DVC experiments
# ---------------------------------------------------------------------------------------------


def dvc_exp_show_json(repo_dir: str | Path = ".", extra_args: Sequence[str] = ("-A",)) -> list[dict[str, Any]]:
    """Run ``dvc exp show --json`` in ``repo_dir`` and return its parsed output."""
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    cmd = [dvc, "exp", "show", "--json", *extra_args]
    try:
        done = subprocess.run(cmd, cwd=repo_dir, capture_output=True, text=True, check=False, timeout=600)
    except FileNotFoundError:
        raise ReportError(f"'{dvc}' not found: install dvc or pass a saved 'dvc exp show --json' file") from None
    if done.returncode != 0:
        raise ReportError(f"'{' '.join(cmd)}' in '{repo_dir}' failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return parse_json_text(done.stdout, "dvc exp show --json")


def parse_json_text(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{where}: not valid JSON ({exc})") from None


def read_dvc_exps(
    source: str | Path | list[dict[str, Any]],
    *,
    params_file: str = "params.yaml",
    metrics_file: str | None = None,
    include_workspace: bool = True,
) -> list[RunRecord]:
    """DVC experiments (and their baseline commits) → records.

    Args:
        source: a saved ``dvc exp show --json`` file, a repository folder (the command is run
            there), or the already parsed list.
        include_workspace: the ``workspace`` entry is kept unless another entry has the same
            params and metrics (it usually mirrors the last applied experiment).
    """
    if isinstance(source, list):
        states = source
    else:
        path = Path(source)
        if path.is_dir():
            states = dvc_exp_show_json(path)
        elif path.is_file():
            states = parse_json_text(path.read_text(), str(path))
        else:
            raise ReportError(f"DVC source '{path}' is neither a 'dvc exp show --json' file nor a folder")
    if not isinstance(states, list):
        raise ReportError(f"DVC source '{source}': expected a JSON list of experiment states, found {type(states).__name__}")
    records: list[RunRecord] = []
    workspace: list[RunRecord] = []
    for state in states:
        for record, is_workspace in _walk_state(state, None, params_file, metrics_file, baseline=None):
            (workspace if is_workspace else records).append(record)
    if include_workspace:
        seen = {(json.dumps(r.flat_config, sort_keys=True, default=str), json.dumps(r.metrics, sort_keys=True)) for r in records}
        for record in workspace:
            key = (json.dumps(record.flat_config, sort_keys=True, default=str), json.dumps(record.metrics, sort_keys=True))
            if key not in seen:
                records.insert(0, record)
    log.info("read %d DVC experiment record(s)", len(records))
    return records


def _walk_state(
    state: Mapping[str, Any],
    executor: Mapping[str, Any] | None,
    params_file: str,
    metrics_file: str | None,
    baseline: str | None,
) -> Iterable[tuple[RunRecord, bool]]:
    if not isinstance(state, Mapping) or "rev" not in state:
        raise ReportError(f"dvc exp show JSON: expected an experiment state with 'rev', found {str(state)[:120]}")
    for record in _dvc_records(state, executor, params_file, metrics_file, baseline):
        yield record, state.get("rev") == "workspace"
    for exp_range in state.get("experiments") or []:
        for child in exp_range.get("revs") or []:
            yield from _walk_state(child, exp_range.get("executor"), params_file, metrics_file, state.get("rev"))


def _method_metrics(data: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """The pipeline's per-method metrics file ``{method: {protocol: {metric: value}}}`` (a method
    key holds protocols; a ``train`` group of training figures is not a protocol)."""
    out = {}
    for method, protocols in data.items():
        cleaned = clean_metrics({p: v for p, v in protocols.items() if p != "train"}) if isinstance(protocols, Mapping) else {}
        if cleaned:
            out[str(method)] = cleaned
    return out


def _dvc_records(
    state: Mapping[str, Any],
    executor: Mapping[str, Any] | None,
    params_file: str,
    metrics_file: str | None,
    baseline: str | None,
) -> list[RunRecord]:
    """One record per method of an experiment state.

    Metrics files: the pipeline's ``results/<method>/metrics.json`` (``{method: {protocol:
    {mAP, rank1}}}``), or a legacy ``results/metrics.json`` (``{"method", "dataset", "protocols"}``).
    ``metrics_file`` restricts the reading to one file (``None``: every metrics file).
    """
    rev = str(state.get("rev"))
    name = state.get("name")
    data = state.get("data") or {}
    status = COMPLETED
    if executor and executor.get("state"):
        status = DVC_STATUS.get(str(executor["state"]), str(executor["state"]).upper())
    if state.get("error"):
        status = "FAILED"
    params: dict[str, Any] = {}
    for file_name, result in (data.get("params") or {}).items():
        values = (result or {}).get("data") or {}
        if file_name == params_file:
            params.update(values)
        else:  # other params files keep their name as a prefix, as dvc exp show does
            params.update({f"{file_name}:{k}": v for k, v in values.items()})
    files = data.get("metrics") or {}
    if metrics_file is not None:
        files = {metrics_file: files.get(metrics_file) or {}}
    found: list[tuple[dict[str, Any], dict[str, dict[str, float]], Any]] = []  # (params, metrics, sacred id)
    for _, result in sorted(files.items()):
        metrics_data = (result or {}).get("data") or {}
        if "protocols" in metrics_data:  # legacy single-method file
            legacy = dict(params)
            if metrics_data.get("method") is not None:
                legacy.setdefault("method", metrics_data["method"])
            if metrics_data.get("dataset") is not None:
                legacy["dataset"] = dict(legacy.get("dataset") or {})
                legacy["dataset"].setdefault("name", metrics_data["dataset"])
            found.append((legacy, clean_metrics(metrics_data.get("protocols")), metrics_data.get("sacred_run_id")))
            continue
        for method, metrics in _method_metrics(metrics_data).items():
            found.append(({**params, "method": method}, metrics, None))
    if not found:
        if not params:
            return []
        found = [(params, {}, None)]
        if status == COMPLETED:
            status = "NO_METRICS"
    run_id = str(name) if name and rev != "workspace" else ("workspace" if rev == "workspace" else rev[:7])
    records = []
    for values, metrics, sacred_id in found:
        records.append(
            RunRecord(
                run_id=run_id,
                source="dvc",
                experiment="dvc_exp",
                status=status,
                config=values,
                flat_config=flatten_dict(values),
                metrics=metrics,
                provenance=Provenance(
                    git_commit=None if rev == "workspace" else rev,
                    git_dirty=rev == "workspace",
                    dvc_exp=str(name) if name and baseline is not None else None,
                    sacred_run_id=None if sacred_id is None else str(sacred_id),
                ),
                start_time=None,
            )
        )
    return records
