"""A local run dashboard: a MongoDB-wire server Omniboard accepts, fed from the Sacred file store.

Why a proxy: the project's embedded MongoDB-wire server (PyPI ``nx-27017``) answers the handshake
(``hello``/``isMaster``) with ``minWireVersion`` 17, and Omniboard 2.x bundles the Node driver
3.7, which speaks wire versions up to 13 and refuses the server. Every feature Omniboard uses
exists at wire version 6 (OP_MSG), so :class:`WireProxy` forwards bytes both ways and rewrites
only one number, ``minWireVersion``, in the server's handshake replies (OP_REPLY and OP_MSG).
A real ``mongod`` needs none of this (README: the Docker line) and is used unchanged.

The pieces — :func:`start_nx27017`, :class:`WireProxy`, :func:`find_omniboard` — are separate so
the command (:mod:`maskcl.report.board_command`) and the tests can use each alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcl.report.records import ReportError

log = logging.getLogger(__name__)

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
CHECKSUM_PRESENT = 1
ADVERTISED_MIN_WIRE = 6  # MongoDB 3.6: OP_MSG; Node driver 3.7 accepts 2..13
HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# the wire-version rewrite
# ---------------------------------------------------------------------------------------------


def _lower_min_wire(doc: dict[str, Any], floor: int) -> bool:
    value = doc.get("minWireVersion")
    if isinstance(value, int) and value > floor:
        doc["minWireVersion"] = floor
        return True
    return False


def rewrite_reply(message: bytes, floor: int = ADVERTISED_MIN_WIRE) -> bytes:
    """A server message with ``minWireVersion`` lowered to ``floor`` (any other message unchanged).

    Handles OP_REPLY (the legacy ``isMaster`` answer) and OP_MSG (``hello``); an OP_MSG checksum
    would no longer match, so it is dropped with its flag (the checksum is optional).
    """
    import bson

    if len(message) < HEADER.size:
        return message
    _, request_id, response_to, op_code = HEADER.unpack_from(message)
    body = message[HEADER.size:]
    try:
        if op_code == OP_REPLY:
            flags, cursor_id, starting_from, number = struct.unpack_from("<iqii", body)
            docs = bson.decode_all(body[20:])
            if not any(_lower_min_wire(d, floor) for d in docs):
                return message
            new_body = struct.pack("<iqii", flags, cursor_id, starting_from, number) + b"".join(bson.encode(d) for d in docs)
        elif op_code == OP_MSG:
            (flag_bits,) = struct.unpack_from("<I", body)
            end = len(body) - (4 if flag_bits & CHECKSUM_PRESENT else 0)
            sections, pos, changed = [], 4, False
            while pos < end:
                kind = body[pos]
                if kind == 0:
                    size = struct.unpack_from("<i", body, pos + 1)[0]
                    doc = bson.decode(body[pos + 1:pos + 1 + size])
                    changed |= _lower_min_wire(doc, floor)
                    sections.append(b"\x00" + bson.encode(doc))
                    pos += 1 + size
                else:  # kind 1: a document sequence, passed through as it is
                    size = struct.unpack_from("<i", body, pos + 1)[0]
                    sections.append(body[pos:pos + 1 + size])
                    pos += 1 + size
            if not changed:
                return message
            new_body = struct.pack("<I", flag_bits & ~CHECKSUM_PRESENT) + b"".join(sections)
        else:
            return message
    except Exception:  # noqa: BLE001 - anything unparsable is forwarded untouched
        return message
    return HEADER.pack(HEADER.size + len(new_body), request_id, response_to, op_code) + new_body


class WireProxy:
    """A TCP proxy ``127.0.0.1:port`` → ``upstream`` that rewrites handshake replies.

    It runs its own asyncio loop in a daemon thread: ``start()`` returns once it listens,
    ``stop()`` closes it. Messages are read whole (length-prefixed) from the server side only;
    client bytes are forwarded as they come.
    """

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0, host: str = "127.0.0.1",
                 floor: int = ADVERTISED_MIN_WIRE) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port, self.floor = host, port, floor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> "WireProxy":
        self._thread = threading.Thread(target=self._run, name="maskcl-wire-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ReportError(f"dashboard proxy on {self.host}:{self.port}: {self._error}")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        # connections still open: cancel their tasks and let them finish before closing the loop
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("dashboard proxy: upstream %s:%s refused: %s", *self.upstream, exc)
            writer.close()
            return

        async def client_to_server() -> None:
            while data := await reader.read(1 << 16):
                up_writer.write(data)
                await up_writer.drain()

        async def server_to_client() -> None:
            while True:
                header = await up_reader.readexactly(HEADER.size)
                (length,) = struct.unpack_from("<i", header)
                rest = await up_reader.readexactly(length - HEADER.size)
                writer.write(rewrite_reply(header + rest, self.floor))
                await writer.drain()

        tasks = [asyncio.ensure_future(client_to_server()), asyncio.ensure_future(server_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # IncompleteReadError at a closed socket
            for w in (writer, up_writer):
                w.close()

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return
        loop, server = self._loop, self._server

        def _close() -> None:
            server.close()
            loop.stop()

        loop.call_soon_threadsafe(_close)
        if self._thread is not None:
            self._thread.join(5)


# ---------------------------------------------------------------------------------------------
# processes: the wire server and Omniboard
# ---------------------------------------------------------------------------------------------


@dataclass
class Process:
    """A child process we started (stopped by its own pid only)."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ReportError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ReportError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def start_nx27017(workdir: Path, port: int | None = None) -> tuple[Process, int]:
    """Start PyPI ``nx-27017`` (SQLite-backed MongoDB-wire server) on 127.0.0.1; its file in ``workdir``."""
    try:
        import nx_27017  # noqa: F401
    except ImportError:
        raise ReportError("the dashboard needs the nx-27017 package (pip install nx-27017) or a real mongod "
                          "(--mongo-url mongodb://127.0.0.1:27017)") from None
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "nx27017.log"
    cmd = [sys.executable, "-m", "nx_27017.nx_27017", "--host", "127.0.0.1", "-p", str(port),
           "--db", str(workdir / "nx27017.db"), "--pid-file", str(workdir / "nx27017.pid"), "--log-file", str(log_path)]
    with open(workdir / "nx27017.stdout", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    server = Process("nx-27017", proc, log_path)
    try:
        wait_for_port("127.0.0.1", port, 30, proc)
    except ReportError:
        server.stop()
        raise
    return server, port


OMNIBOARD_ENV = "MASKCL_OMNIBOARD"
INSTALL_HINT = "npm install omniboard   # Node.js >= 14; then `maskcl board` finds node_modules/.bin/omniboard"


def find_omniboard(root: Path | None = None) -> str | None:
    """``$MASKCL_OMNIBOARD``, ``<root>/node_modules/.bin/omniboard``, or ``omniboard`` on PATH."""
    env = os.environ.get(OMNIBOARD_ENV, "").strip()
    if env:
        return env if Path(env).is_file() or shutil.which(env) else None
    local = (root or Path.cwd()) / "node_modules" / ".bin" / "omniboard"
    if local.is_file():
        return str(local)
    return shutil.which("omniboard")


def start_omniboard(executable: str, mongo_host: str, mongo_port: int, db_name: str, web_port: int,
                    workdir: Path) -> Process:
    """``PORT=web_port omniboard -m host:port:db`` (Omniboard reads its web port from ``$PORT``)."""
    log_path = workdir / "omniboard.log"
    cmd = [executable, "-m", f"{mongo_host}:{mongo_port}:{db_name}"]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                env={**os.environ, "PORT": str(web_port)})
    board = Process("omniboard", proc, log_path)
    try:
        wait_for_port("127.0.0.1", web_port, 60, proc)
    except ReportError as exc:
        board.stop()
        tail = log_path.read_text(errors="replace")[-400:] if log_path.exists() else ""
        raise ReportError(f"Omniboard did not start ({exc}); its log {log_path} ends: {tail!r}") from None
    return board


def omniboard_command(mongo_port: int, db_name: str, web_port: int) -> str:
    """The exact command a user runs when Omniboard is not installed here."""
    return f"PORT={web_port} npx omniboard -m 127.0.0.1:{mongo_port}:{db_name}"
