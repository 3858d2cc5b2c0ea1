"""One training per output folder: an advisory lock file inside ``--out``.

Two trainings into one folder overwrite each other's checkpoint and metrics without a word, so
the second one must refuse at once. The lock is ``fcntl.flock`` on ``<out>/.train.lock``: the
kernel drops it when its process exits in any way (``kill -9``, power loss on a local disk), so a
crashed run never leaves the folder stuck; the PID written inside only serves the message. The
file is removed when the holder finishes (a file left by a killed run is simply taken over).

The lock is re-entrant within a process (``maskcl train`` and the Sacred experiment hold it around
``fit``, which takes it too), and it checks after locking that the path still names the file it
locked, so a holder that unlinks the file on release cannot let two later processes lock two
different files.
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from maskcl.errors import OutputError, OutputLockedError

LOCK_NAME = ".train.lock"


@dataclass
class _Held:
    fd: int
    path: Path
    depth: int = 1

    def still_at_path(self) -> bool:
        """True while ``path`` names the locked file (not after a rename of the folder)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            return False


_held: dict[Path, _Held] = {}


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and parents); a file in its place is one :class:`OutputError`."""
    out_dir = Path(out_dir)
    blocker = next((p for p in (out_dir, *out_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        detail = "is a file" if blocker == out_dir else f"is under '{blocker}', which is a file"
        raise OutputError(f"--out '{out_dir}' {detail}; expected a folder for last.pt, history.json and metrics.json")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder '{out_dir}': {exc.strerror or exc}") from None
    return out_dir


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return f"PID {text}" if text.isdigit() else "another process"


def _acquire(path: Path) -> _Held:
    for _ in range(20):  # retried only if the holder removed the file between our open and lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file '{path}': {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"cannot lock '{path}': {exc.strerror or exc}") from None
            raise OutputLockedError(
                f"'{path.parent}' is in use by another training ({_holder(path)} holds '{path.name}'); "
                "wait for it to finish, stop it, or train into another --out folder"
            ) from None
        held = _Held(fd, path)
        if held.still_at_path():
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return held
        os.close(fd)  # the file we locked was unlinked by its releasing holder: lock the new one
    raise OutputError(f"cannot lock '{path}': the lock file keeps being replaced")  # pragma: no cover


def _release(held: _Held) -> None:
    if held.still_at_path():
        held.path.unlink(missing_ok=True)  # unlink before unlocking: see the module docstring
    os.close(held.fd)  # closes the last descriptor of the lock: the kernel drops it


@contextmanager
def train_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``<out_dir>/.train.lock`` for the block (creating ``out_dir``); yields the lock path.

    Raises:
        OutputLockedError: another live process holds it (names the folder and its PID).
        OutputError: ``out_dir`` is a file, or cannot be created.
    """
    out_dir = prepare_out_dir(out_dir)
    path = (out_dir / LOCK_NAME).resolve()
    current = _held.get(path)
    if current is not None and current.still_at_path():
        current.depth += 1
        try:
            yield path
        finally:
            current.depth -= 1
        return
    held = _acquire(path)
    outer = _held.get(path)
    _held[path] = held
    try:
        yield path
    finally:
        _release(held)
        if outer is not None:
            _held[path] = outer
        else:
            _held.pop(path, None)
