"""Send Sacred file-store runs to MongoDB — after an outage, from an offline machine, or into the
local dashboard (``maskcl board``).

Usage::

    maskcl sync --runs runs/sacred --mongo-url mongodb://user:pass@host:27017
    MASKCL_MONGO_URL=mongodb://127.0.0.1:27017 maskcl sync --dry-run

Sacred has no such tool (IDSIA/sacred#434). Each file-store run becomes a MongoDB run in the same
shape the MongoObserver writes (``runs`` document, ``metrics`` collection, GridFS sources and
artifacts), so Omniboard and ``maskcl report --mongo-url`` see it like any other run.

Idempotent: a run is identified by ``info.file_store_id`` + ``file_store_host`` + ``file_store_dir``
(written by the project's Mongo observer into live runs too). A run already in MongoDB with the
same final status is skipped; a partial copy (MongoDB went away mid-run, or the run was marked
INTERRUPTED later) is replaced in place, keeping its ``_id``. Reads files and talks pymongo only:
no Sacred import (DESIGN §2).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import mimetypes
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUNS = "runs"
METRICS = "metrics"


def file_store_key(runs_dir: Path | str, run_id: Any, host: str | None = None) -> dict[str, Any]:
    """The stable identity of a file-store run: host, absolute runs folder, run id.

    Stored in ``info`` of both the file-store run and its MongoDB copy; the sync looks a run up
    by these three fields, so re-sending is idempotent.
    """
    return {
        "file_store_id": int(run_id) if str(run_id).isdigit() else str(run_id),
        "file_store_host": host or platform.node(),
        "file_store_dir": str(Path(runs_dir).resolve()),
    }


def client_options(timeout_ms: int) -> dict[str, int]:
    """pymongo options that make an unreachable server fail fast instead of hanging (sacred#276)."""
    return {
        "serverSelectionTimeoutMS": timeout_ms,
        "connectTimeoutMS": timeout_ms,
        "socketTimeoutMS": max(5 * timeout_ms, 10_000),
    }


@dataclass
class SyncReport:
    """What one sync did, by file-store run id."""

    inserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.inserted)} new, {len(self.updated)} updated, {len(self.skipped)} already there"
                + (f", {len(self.failed)} unreadable ({', '.join(self.failed)})" if self.failed else ""))


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _when(value: Any) -> Any:
    """The file store's ISO timestamps → datetimes (what the MongoObserver stores)."""
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def file_store_runs(runs_dir: Path) -> list[Path]:
    """Run folders (digit names holding a run.json), in id order."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"Sacred file store '{runs_dir}' does not exist (expected <runs>/<id>/run.json)")
    dirs = [p for p in runs_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "run.json").is_file()]
    return sorted(dirs, key=lambda p: int(p.name))


def run_key(run_dir: Path, run: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The stable identity of a file-store run (recorded in ``info`` when the run was made by
    ``experiments/*``; derived from the folder otherwise)."""
    derived = file_store_key(run_dir.parent, run_dir.name, (run.get("host") or {}).get("hostname"))
    return {k: info.get(k, derived[k]) for k in derived}


class MongoSync:
    """Writes file-store runs into one MongoDB database (``runs``, ``metrics``, GridFS)."""

    def __init__(self, db: Any) -> None:
        import gridfs

        self.db = db
        self.runs = db[RUNS]
        self.metrics = db[METRICS]
        self.fs = gridfs.GridFS(db)

    def sync(self, runs_dir: Path, dry_run: bool = False) -> SyncReport:
        report = SyncReport()
        for run_dir in file_store_runs(runs_dir):
            try:
                outcome = self.sync_run(run_dir, dry_run=dry_run)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("run %s: cannot read it (%s: %s)", run_dir, type(exc).__name__, exc)
                report.failed.append(run_dir.name)
                continue
            getattr(report, outcome).append(run_dir.name)
        return report

    def sync_run(self, run_dir: Path, dry_run: bool = False) -> str:
        """'inserted', 'updated' or 'skipped'."""
        run = _read_json(run_dir / "run.json")
        if not isinstance(run, dict):
            raise ValueError(f"{run_dir / 'run.json'} is not a JSON object")
        info = _read_json(run_dir / "info.json", {}) or {}
        key = run_key(run_dir, run, info)
        existing = self.runs.find_one({f"info.{k}": v for k, v in key.items()})
        if existing is not None and self._up_to_date(existing, run):
            return "skipped"
        if dry_run:
            return "updated" if existing is not None else "inserted"
        run_id = existing["_id"] if existing is not None else None
        entry = self._entry(run_dir, run, {**info, **key})
        if run_id is None:
            run_id = self._insert(entry)
        else:
            self._drop_children(existing)
        entry["_id"] = run_id
        entry["artifacts"] = self._artifacts(run_dir, run, run_id)
        entry["info"]["metrics"] = self._metrics(run_dir, run_id) or entry["info"].get("metrics", [])
        self.runs.replace_one({"_id": run_id}, entry, upsert=True)
        log.info("run %s → MongoDB run %s (%s)", run_dir.name, run_id, run.get("status"))
        return "updated" if existing is not None else "inserted"

    @staticmethod
    def _up_to_date(existing: dict[str, Any], run: dict[str, Any]) -> bool:
        if existing.get("status") != run.get("status"):
            return False
        if run.get("status") != "RUNNING":
            return True
        theirs, ours = existing.get("heartbeat"), _when(run.get("heartbeat"))
        return ours is None or (theirs is not None and str(theirs) >= str(ours))

    def _entry(self, run_dir: Path, run: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        experiment = dict(run.get("experiment") or {})
        experiment["sources"] = self._sources(run_dir.parent, experiment)
        config = _read_json(run_dir / "config.json", {}) or {}
        try:
            captured = (run_dir / "cout.txt").read_text(errors="replace")
        except OSError:
            captured = ""
        entry: dict[str, Any] = {
            "experiment": experiment,
            "format": "MongoObserver-0.7.0",
            "command": run.get("command"),
            "host": run.get("host") or {},
            "start_time": _when(run.get("start_time")),
            "config": config,
            "meta": run.get("meta") or {},
            "status": run.get("status"),
            "resources": [list(r) for r in run.get("resources") or []],
            "artifacts": [],
            "captured_out": captured,
            "info": {k: v for k, v in info.items() if k != "metrics" or isinstance(v, dict)},
            "heartbeat": _when(run.get("heartbeat")),
            "result": run.get("result"),
            "synced_from": str(run_dir.resolve()),
        }
        for name in ("stop_time", "fail_trace", "interrupted", "resumed_by"):
            if name in run:
                entry[name] = _when(run[name])
        return entry

    def _insert(self, entry: dict[str, Any]) -> int:
        """A new run ``_id`` the way Sacred picks it (max + 1), retried on a race."""
        import pymongo.errors

        for _ in range(100):
            last = list(self.runs.find({}, {"_id": 1}).sort("_id", -1).limit(1))
            run_id = int(last[0]["_id"]) + 1 if last else 1
            try:
                self.runs.insert_one({**entry, "_id": run_id})
                return run_id
            except pymongo.errors.DuplicateKeyError:
                continue
        raise RuntimeError("could not allocate a MongoDB run _id after 100 attempts")

    def _drop_children(self, existing: dict[str, Any]) -> None:
        """Remove the metric series and artifacts of a partial copy before it is replaced."""
        self.metrics.delete_many({"run_id": existing["_id"]})
        for artifact in existing.get("artifacts") or []:
            if isinstance(artifact, dict) and artifact.get("file_id") is not None:
                self.fs.delete(artifact["file_id"])

    def _sources(self, store: Path, experiment: dict[str, Any]) -> list[list[Any]]:
        """``[[name, gridfs id]]``; each source file is stored once (by path and md5)."""
        base_dir = experiment.get("base_dir", "")
        out = []
        for name, stored in experiment.get("sources") or []:
            path = store / stored
            if not path.is_file():
                continue
            data = path.read_bytes()
            md5 = hashlib.md5(data).hexdigest()
            filename = str(Path(base_dir) / name)
            found = self.fs.find_one({"filename": filename, "metadata.md5": md5})
            file_id = found._id if found is not None else self.fs.put(data, filename=filename, metadata={"md5": md5})
            out.append([name, file_id])
        return out

    def _artifacts(self, run_dir: Path, run: dict[str, Any], run_id: Any) -> list[dict[str, Any]]:
        out = []
        for name in run.get("artifacts") or []:
            path = run_dir / name
            if not path.is_file():
                log.warning("run %s: artifact %s is missing", run_dir.name, name)
                continue
            file_id = self.fs.put(
                path.read_bytes(),
                filename=f"artifact://{RUNS}/{run_id}/{name}",
                content_type=mimetypes.guess_type(name)[0],
                metadata=None,
            )
            out.append({"name": name, "file_id": file_id})
        return out

    def _metrics(self, run_dir: Path, run_id: Any) -> list[dict[str, str]]:
        refs = []
        for name, series in (_read_json(run_dir / "metrics.json", {}) or {}).items():
            doc = {
                "run_id": run_id,
                "name": name,
                "steps": list(series.get("steps") or []),
                "values": [float(v) for v in series.get("values") or []],
                "timestamps": [_when(t) for t in series.get("timestamps") or []],
            }
            inserted = self.metrics.insert_one(doc)
            refs.append({"name": name, "id": str(inserted.inserted_id)})
        return refs


def sync(runs_dir: str | Path, url: str, db_name: str, timeout_ms: int = 5000, dry_run: bool = False) -> SyncReport:
    """Send every run under ``runs_dir`` to ``db_name`` at ``url``."""
    import pymongo

    with pymongo.MongoClient(url, **client_options(timeout_ms)) as client:
        client.admin.command("ping")
        return MongoSync(client[db_name]).sync(Path(runs_dir), dry_run=dry_run)
