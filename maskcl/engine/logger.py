"""The run-logger interface the engine reports through (no Sacred import in the library).

``experiments/`` passes an adapter around Sacred's ``_run`` (``log_scalar`` → ``_run.log_scalar``,
``log_info`` → ``_run.info[key] = value``); tests and the plain CLI use :class:`NullLogger`.
Metric names are dotted (``train.loss``, ``cluster.n_clusters``, ``test.cc.mAP``, ``lr``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class RunLogger(Protocol):
    def log_scalar(self, name: str, value: float, step: int) -> None: ...

    def log_info(self, key: str, value: Any) -> None: ...


class NullLogger:
    """Discards everything."""

    def log_scalar(self, name: str, value: float, step: int) -> None:
        pass

    def log_info(self, key: str, value: Any) -> None:
        pass


class MemoryLogger:
    """Keeps everything in lists/dicts (tests, notebooks)."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.info: dict[str, Any] = {}

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.scalars.setdefault(name, []).append((step, float(value)))

    def log_info(self, key: str, value: Any) -> None:
        self.info[key] = value
