"""Project exceptions.

Every error a user can cause (a malformed dataset, a bad params.yaml value, a checkpoint from
another architecture …) is raised as a :class:`MaskclError` whose message names *where* the
problem is (file, key), *what* was found and *what* was expected. The CLI prints the message on
one line and exits non-zero; a traceback is reserved for bugs in this project.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

_E = TypeVar("_E", bound=BaseException)


class MaskclError(Exception):
    """Base class of every error this project raises for bad input or a lost resource."""

    exit_code: int = 2

    def __init__(self, *args: object) -> None:
        # A DataLoader worker re-raises our error in the main process as ``cls(<worker traceback>)``;
        # keep only the original one-line message so the CLI still prints one line.
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(args[0], type(self)),)
        super().__init__(*args)


def find_in_chain(exc: BaseException | None, kind: type[_E]) -> _E | None:
    """The first exception of ``kind`` along ``exc``'s cause/context chain (``exc`` included).
    Libraries wrap what went wrong (torch.save turns ENOSPC into a RuntimeError, Sacred wraps a
    config error), and the one-line message must name the original."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _unwrap_worker_message(text: str, cls: type) -> str:
    """The original message inside torch's "Caught X in DataLoader worker process N" text."""
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    lines = text.rstrip("\n").split("\n")
    worker = lines[0].removeprefix("Caught ").rstrip(".")
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        for i in range(len(lines) - 1, 0, -1):
            if lines[i].startswith(prefix):
                message = " ".join(line.strip() for line in lines[i:]).removeprefix(prefix)
                return f"{message} [{worker.split(' in ', 1)[-1]}]" if " in " in worker else message
    return text


class ConfigError(MaskclError):
    """A configuration key is unknown, of the wrong type or out of range."""


class DatasetError(MaskclError):
    """A dataset folder, file name or split does not follow the dataset's documented form."""


class MaskError(MaskclError):
    """A silhouette mask is missing, unreadable or of the wrong size."""


class CheckpointError(MaskclError):
    """A checkpoint is missing, corrupt, unsafe to load or from another architecture."""


class ClusteringError(MaskclError):
    """Pseudo-labelling produced something training cannot use (e.g. no cluster at all)."""


class TrainingError(MaskclError):
    """Training cannot go on (e.g. a non-finite loss); the message names the last good checkpoint."""


class FeaturesError(MaskclError):
    """A saved features file is missing, unreadable or inconsistent."""


class OutputExistsError(MaskclError):
    """An output folder already holds files and ``--force`` was not given."""


class OutputError(MaskclError):
    """An output path cannot be written: a file where a folder is expected (or the reverse), a
    full disk, no permission. Nothing half-written is left behind."""


class OutputLockedError(OutputError):
    """Another live process is training into the same output folder (it holds the folder's lock)."""


def where(path: str | Path, detail: str = "") -> str:
    """Format a location for an error message: ``'<path>'`` or ``'<path>' (detail)``."""
    text = f"'{path}'"
    return f"{text} ({detail})" if detail else text
