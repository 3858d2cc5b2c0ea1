"""A MongoDB-wire server for tests: ``nx-27017`` (SQLite-backed) on 127.0.0.1, or a real mongod.

Why a subprocess: nx-27017 runs its own event loop/threads and signal handlers; in a child process
it cannot block or slow the test process, and it is stopped by pid at the end of the session.

Use from ``tests/conftest.py``::

    from tests.mongo_fixture import mongo_server  # noqa: F401  (session-scoped fixture)

and in a test (marked ``@pytest.mark.mongo``)::

    def test_x(mongo_server):  # MongoServer(url, make_db_name())
        db_name = mongo_server.new_db_name()

When ``MASKCL_TEST_MONGO_URL`` is set (e.g. ``mongodb://127.0.0.1:27017``) that server is used
instead; every test should still take its own database (``new_db_name()``) so runs never mix.

Known nx-27017 limits (0.8.x): float arrays come back rounded to 15 significant digits (compare
floats with a tolerance), and user collection names with a dot are refused (``OperationFailure:
Invalid identifier``; do not use a Sacred ``collection_prefix`` with a dot). Sacred's ``runs`` /
``metrics`` collections and GridFS artifacts (``fs.files``/``fs.chunks``, mapped by the server)
work: checked with ``_run.add_artifact`` read back through ``gridfs.GridFS``.
If the ``nx_27017`` package is missing the fixture skips the test.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ENV_URL = "MASKCL_TEST_MONGO_URL"
START_TIMEOUT_S = 20.0


@dataclass
class MongoServer:
    """Where the test server listens; ``new_db_name()`` gives each test its own database."""

    url: str
    kind: str  # "nx-27017" | "mongod"
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8], repr=False)

    def new_db_name(self, stem: str = "maskcl_test") -> str:
        return f"{stem}_{self._prefix}_{next(self._counter)}"

    def client(self, **kwargs):  # -> pymongo.MongoClient
        import pymongo

        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000, **kwargs)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_ping(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    import pymongo

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"nx-27017 exited early with code {proc.returncode}")
        try:
            with pymongo.MongoClient(url, serverSelectionTimeoutMS=500) as client:
                client.admin.command("ping")
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not up yet"
            last_error = exc
            time.sleep(0.1)
    raise RuntimeError(f"MongoDB-wire server at {url} did not answer a ping in {timeout_s:.0f} s: {last_error}")


def start_nx27017(workdir: Path) -> tuple[subprocess.Popen, str]:
    """Start ``nx-27017`` on 127.0.0.1 on a free port with its database file in ``workdir``."""
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "nx_27017.nx_27017",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--db",
        str(workdir / "nx27017.db"),
        "--pid-file",
        str(workdir / "nx27017.pid"),
        "--log-file",
        str(workdir / "nx27017.log"),
    ]
    log = open(workdir / "nx27017.stdout", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    log.close()
    url = f"mongodb://127.0.0.1:{port}"
    try:
        _wait_for_ping(url, proc, START_TIMEOUT_S)
    except Exception:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (by its own pid only)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """A MongoDB-wire server for the whole session (real mongod via env, else nx-27017)."""
    url = os.environ.get(ENV_URL)
    if url:
        _wait_for_ping(url, None, 5.0)
        yield MongoServer(url=url, kind="mongod")
        return
    try:
        import nx_27017  # noqa: F401
    except ImportError:
        pytest.skip("nx-27017 is not installed (pip install nx-27017) and MASKCL_TEST_MONGO_URL is unset")
    proc, url = start_nx27017(tmp_path_factory.mktemp("nx27017"))
    try:
        yield MongoServer(url=url, kind="nx-27017")
    finally:
        stop(proc)
