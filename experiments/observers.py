"""Sacred observers chosen from the environment.

Why this exists (anchors §2.4): a run must never be lost because MongoDB is down, and it must
never be *aborted* because MongoDB is down either — Sacred fails the whole run if an observer
raises in ``started_event``, and pymongo waits 30 s per operation on an unreachable server. So:

* a :class:`~sacred.observers.FileStorageObserver` is always attached, under an absolute runs
  folder (default ``<project>/runs/sacred``; git-ignored and never a DVC output, because DVC deletes
  a stage's outputs before it runs). Its run ids are *the* run ids (``sacred_run_id`` in every
  metrics file): it has the higher priority, so Sacred asks it first;
* a :class:`MaskclMongoObserver` is added only when ``MASKCL_MONGO_URL`` is set **and** a ping with
  a short ``serverSelectionTimeoutMS`` answers; otherwise a warning is logged and the run goes on
  with files only (``python -m experiments.sync`` sends those runs to MongoDB later). The Mongo
  observer numbers its runs itself (Mongo's own ``_id`` sequence), records which file-store run it
  mirrors (``info.file_store_id`` / ``file_store_host`` / ``file_store_dir``: the key the sync tool
  uses so a run is never stored twice), and pickles the run entry to ``failure_dir`` if MongoDB
  disappears before the end;
* observers are attached on rank 0 only (``RANK`` unset or ``0``): ``torchrun`` starts one process
  per GPU and each would otherwise record its own run (IDSIA/sacred#772);
* credentials in the URL are never logged: every message goes through :func:`redact`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from sacred.observers import FileStorageObserver, MongoObserver, RunObserver

from maskcl.report.sync import file_store_key  # noqa: F401  (one key for live runs and the sync)

from maskcl.errors import ConfigError

log = logging.getLogger(__name__)

ENV_URL = "MASKCL_MONGO_URL"
ENV_DB = "MASKCL_MONGO_DB"
ENV_RUNS_DIR = "MASKCL_RUNS_DIR"
ENV_TIMEOUT_MS = "MASKCL_MONGO_TIMEOUT_MS"
DEFAULT_DB = "maskcl"
DEFAULT_RUNS_DIR = Path("runs") / "sacred"
DEFAULT_TIMEOUT_MS = 2000
FILE_PRIORITY = 40  # > Sacred's Mongo default (30): the file store is asked first and names the run
MONGO_FAILED_DIRNAME = "_mongo_failed"  # inside the runs folder; not a digit, so never taken for a run

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^@/\s]+)@")


def redact(text: Any, url: str | None = None) -> str:
    """``text`` with ``user:password@`` in any URL replaced by ``***:***@``.

    When ``url`` is given, its password (and user name) are also blanked wherever they appear on
    their own, e.g. inside an exception message that quotes them.
    """
    out = _USERINFO.sub(lambda m: m.group("scheme") + "***:***@", str(text))
    if url:
        match = _USERINFO.search(url)
        if match:
            from urllib.parse import unquote

            user, _, password = match.group("userinfo").partition(":")
            for secret in {password, unquote(password), user, unquote(user)}:
                if len(secret) >= 3:  # blanking "a" everywhere would destroy the message
                    out = out.replace(secret, "***")
    return out


def is_rank_zero() -> bool:
    """True unless ``RANK`` names another process of a distributed launch."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def project_root(start: Path | None = None) -> Path:
    """The project folder: the nearest parent holding ``dvc.yaml``, ``.dvc`` or ``.git``.

    ``dvc exp run --temp/--queue`` runs stages in a copy under ``<project>/.dvc/tmp/exps/...``;
    the runs folder must outlive that copy, so the part before ``/.dvc/tmp/`` is returned then.
    """
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 2] == (".dvc", "tmp"):
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ("dvc.yaml", ".dvc", ".git")):
            return folder
    return here


def default_runs_dir() -> Path:
    """``$MASKCL_RUNS_DIR`` or ``<project>/runs/sacred``, always absolute."""
    env = os.environ.get(ENV_RUNS_DIR)
    if env:
        return Path(env).expanduser().resolve()
    return project_root() / DEFAULT_RUNS_DIR


def mongo_settings() -> tuple[str | None, str, int]:
    """(url or None, database name, timeout in ms) from the environment."""
    url = os.environ.get(ENV_URL, "").strip() or None
    db_name = os.environ.get(ENV_DB, "").strip() or DEFAULT_DB
    raw = os.environ.get(ENV_TIMEOUT_MS, "").strip()
    try:
        timeout_ms = int(raw) if raw else DEFAULT_TIMEOUT_MS
    except ValueError:
        timeout_ms = -1
    if timeout_ms <= 0:
        raise ConfigError(
            f"environment variable {ENV_TIMEOUT_MS} is {raw!r}; expected a whole number of milliseconds > 0 "
            f"(default {DEFAULT_TIMEOUT_MS})"
        )
    return url, db_name, timeout_ms


def client_options(timeout_ms: int) -> dict[str, int]:
    """pymongo options that make an unreachable server fail fast instead of hanging (sacred#276)."""
    return {
        "serverSelectionTimeoutMS": timeout_ms,
        "connectTimeoutMS": timeout_ms,
        "socketTimeoutMS": max(5 * timeout_ms, 10_000),
    }


def ping(url: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> str | None:
    """None if a MongoDB server at ``url`` answers a ping, else the (redacted) reason."""
    import pymongo

    try:
        with pymongo.MongoClient(url, **client_options(timeout_ms)) as client:
            client.admin.command("ping")
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "use files only"
        return redact(f"{type(exc).__name__}: {exc}", url)


class MaskclMongoObserver(MongoObserver):
    """A MongoObserver that numbers its own runs and remembers the file-store run it mirrors.

    Sacred hands every observer the ``_id`` chosen by the first one (the file store here). A
    MongoDB shared by several machines already holds that number for another run, and an insert
    with a given ``_id`` that collides raises and aborts the run; so the given id is ignored and
    Mongo's own sequence is used. ``final_attempts`` bounds the retries at the end of a run when
    the server is gone (Sacred's default is 10 × (timeout + 1 s)).
    """

    def __init__(self, *args: Any, file_store: FileStorageObserver | None = None,
                 final_attempts: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file_store = file_store
        self.final_attempts = final_attempts

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):  # noqa: D102
        mongo_id = super().started_event(ex_info, command, host_info, start_time, config, meta_info, None)
        self._origin = {}
        if self.file_store is not None and _id is not None:
            # in the first document already, so a run whose server dies before the first
            # heartbeat is still recognised by `experiments.sync`
            self._origin = file_store_key(self.file_store.basedir, _id, host_info.get("hostname"))
            self.run_entry["info"] = dict(self._origin)
            self.save()
        return mongo_id

    def heartbeat_event(self, info, captured_out, beat_time, result):  # noqa: D102
        origin = getattr(self, "_origin", None)
        merged = {**origin, **info} if origin else info
        super().heartbeat_event(merged, captured_out, beat_time, result)

    def completed_event(self, stop_time, result):  # noqa: D102
        self.run_entry["stop_time"] = stop_time
        self.run_entry["result"] = _flatten(result)
        self.run_entry["status"] = "COMPLETED"
        self.final_save(attempts=self.final_attempts)

    def __repr__(self) -> str:  # shown in Sacred's "error in observer" warning: no URL, no secret
        return f"<MaskclMongoObserver db={self.runs.database.name!r}>"


def _flatten(value: Any) -> Any:
    from sacred.serializer import flatten

    return flatten(value)


def mongo_observer(url: str, db_name: str, failure_dir: Path, timeout_ms: int,
                   file_store: FileStorageObserver | None = None) -> MaskclMongoObserver:
    """A :class:`MaskclMongoObserver` whose client fails fast (no ping here)."""
    return MaskclMongoObserver(
        url=url,
        db_name=db_name,
        failure_dir=str(failure_dir),
        file_store=file_store,
        **client_options(timeout_ms),
    )


def observers_from_env(runs_dir: Path | str | None = None) -> list[RunObserver]:
    """The observers for this process: file store always, MongoDB when configured and reachable.

    Returns ``[]`` on ranks other than 0. Never raises because of MongoDB.
    """
    if not is_rank_zero():
        log.info("RANK=%s: no Sacred observers on this process", os.environ.get("RANK"))
        return []
    runs_dir = Path(runs_dir).expanduser().resolve() if runs_dir is not None else default_runs_dir()
    runs_dir.mkdir(parents=True, exist_ok=True)
    file_store = FileStorageObserver(str(runs_dir), priority=FILE_PRIORITY)
    observers: list[RunObserver] = [file_store]
    url, db_name, timeout_ms = mongo_settings()
    if url is None:
        log.info("Sacred runs go to %s (set %s to also record them in MongoDB)", runs_dir, ENV_URL)
        return observers
    reason = ping(url, timeout_ms)
    if reason is not None:
        log.warning(
            "MongoDB at %s did not answer (%s); recording to %s only — send the runs later with "
            "`python -m experiments.sync --runs %s`",
            redact(url), reason, runs_dir, runs_dir,
        )
        return observers
    try:
        observers.append(mongo_observer(url, db_name, runs_dir / MONGO_FAILED_DIRNAME, timeout_ms, file_store))
    except Exception as exc:  # noqa: BLE001 - a bad URL must not stop training
        log.warning("cannot use MongoDB at %s (%s); recording to files only", redact(url), redact(exc, url))
        return observers
    log.info("Sacred runs go to %s and MongoDB %s (database %s)", runs_dir, redact(url), db_name)
    return observers
