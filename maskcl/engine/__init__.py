"""Training loop, feature extraction, checkpoints; reports through :class:`RunLogger`.

``fit`` and ``evaluate_checkpoint`` are imported lazily so that ``import maskcl.engine`` (e.g.
by the CLI's ``register``) does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fit", "evaluate_checkpoint", "TrainResult", "RunLogger", "NullLogger"]


def __getattr__(name: str) -> Any:
    if name in ("fit", "evaluate_checkpoint", "TrainResult"):
        from maskcl.engine import trainer

        return getattr(trainer, name)
    if name in ("RunLogger", "NullLogger"):
        from maskcl.engine import logger

        return getattr(logger, name)
    raise AttributeError(f"module 'maskcl.engine' has no attribute {name!r}")
