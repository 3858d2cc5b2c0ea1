"""Atomic output files: a temp file in the same folder, then ``os.replace``.

A reader (DVC, ``dvc metrics show``, the next stage) sees either the previous file or the whole
new one, never a truncated one, and a failed write (full disk, no permission, a folder where a
file should be) is one :class:`~maskcl.errors.OutputError` naming the path, with the temp file
removed. Temp files are named ``.<name>.<random>.tmp`` so concurrent writers never share one and
:func:`remove_stale_temps` can tell the project's own leftovers (a ``kill -9`` mid-write) from
anything else in a folder. Files are created following the umask, like ``open()`` would
(``tempfile.mkstemp`` alone creates them 0600).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from maskcl.errors import OutputError

log = logging.getLogger(__name__)

# `.metrics.json.k3j2.tmp`, `last.pt.k3j2.tmp` (checkpoints), `history.json.tmp` (older writers)
_STALE = re.compile(r"^\.?[\w.-]+\.(?:pt|json|csv|npz|yaml)(?:\.[\w-]+)?\.tmp$")


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - non-Linux fallback (briefly sets, then restores)
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def write_failure(path: Path, exc: OSError, what: str = "file") -> str:
    """One line: which path, why the write failed, and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason, fix = "the disk is full (no space left on device)", "free space and run again"
    elif isinstance(exc, IsADirectoryError) or (path.is_dir() and not path.is_symlink()):
        reason, fix = "it is a folder", f"expected a {what} path; give a file name (e.g. '{path / 'out.json'}')"
    elif isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), path.parent)
        reason, fix = f"'{blocker}' is a file, not a folder", "choose a path inside a folder"
    elif isinstance(exc, PermissionError):
        reason, fix = "permission denied", "check the folder is writable"
    else:
        reason, fix = f"{type(exc).__name__}: {exc.strerror or exc}", "check the path and run again"
    return f"cannot write {what} '{path}': {reason}; nothing was written there (any previous file is unchanged) — {fix}"


def _open_temp(fd: int) -> BinaryIO:
    return os.fdopen(fd, "wb")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None], what: str = "file") -> Path:
    """Write ``path`` through ``write(handle)`` atomically; any OSError is an :class:`OutputError`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(write_failure(path, IsADirectoryError(errno.EISDIR, "Is a directory"), what))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(write_failure(path, exc, what)) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with _open_temp(fd) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if isinstance(cause, OSError):
            raise OutputError(write_failure(path, cause, what)) from None
        raise
    return path


def write_text_atomic(path: str | Path, text: str, what: str = "file") -> Path:
    """:func:`write_atomic` of UTF-8 ``text``."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")), what)


def remove_stale_temps(folder: str | Path, protect: Iterable[Path] = ()) -> list[tuple[str, int]]:
    """Delete the temp files a killed writer of this project left in ``folder`` (not recursive).

    Only names of the project's own writers match (``.<name>.<random>.tmp``, ``last.pt.<random>.tmp``,
    ``<name>.json.tmp``); call it only while holding the folder (its lock), so no live writer's
    temp file is taken. Returns ``(name, size in bytes)`` of each file removed.
    """
    folder = Path(folder)
    keep = {Path(p).name for p in protect}
    removed: list[tuple[str, int]] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        if path.name in keep or not _STALE.match(path.name) or not path.is_file() or path.is_symlink():
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError as exc:
            log.warning("could not remove the stale temp file '%s': %s", path, exc.strerror or exc)
            continue
        removed.append((path.name, size))
    return removed
