"""One record shape for every run store the report reads (Sacred file store, Sacred MongoDB, DVC).

Why one shape: the tables and plots should not care whether a number came from a Sacred run or
from ``dvc exp show``; every reader in :mod:`maskcl.report.stores` returns :class:`RunRecord`.

Metrics are percentages (0–100), keyed ``{protocol: {metric: value}}`` with metric names
``mAP``, ``rank1``, ``rank5``, ``rank10``, ``rank20`` (contract). Curves are Sacred's
``log_scalar`` series ``{name: [(step, value), ...]}`` with dotted names (``test.cc.mAP``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from maskcl.config import Config, flatten_dict
from maskcl.errors import MaskclError

COMPLETED = "COMPLETED"
METRIC_NAMES = ("mAP", "rank1", "rank5", "rank10", "rank20")


class ReportError(MaskclError):
    """A run store is unreachable or holds something the report cannot read."""


class StoreUnreachable(ReportError):
    """A MongoDB server did not answer (exit 1: try again later; a usage error exits 2)."""

    exit_code = 1


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: code version, data version, DVC experiment, device."""

    git_commit: str | None = None
    git_dirty: bool | None = None
    data_hash: str | None = None
    dvc_exp: str | None = None
    device: str | None = None
    sacred_run_id: str | None = None  # DVC records: the Sacred run the metrics file points at


@dataclass
class RunRecord:
    """One finished (or not) run, whatever store it was read from.

    ``config`` is the nested config (as params.yaml / Sacred hold it); ``flat_config`` the same
    with dotted keys (``dataset.name``), which is what grouping and filtering use.
    """

    run_id: str
    source: str  # "sacred-file", "sacred-mongo" or "dvc"
    experiment: str  # Sacred experiment name (maskcl_train / maskcl_evaluate) or "dvc_exp"
    status: str  # Sacred status (COMPLETED, FAILED, RUNNING, ...) or mapped from the DVC executor
    config: dict[str, Any] = field(default_factory=dict)
    flat_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    tags: tuple[str, ...] = ()
    start_time: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # output name → md5 recorded by the run
    train_run_id: str | None = None  # an evaluate run: the Sacred run that trained its checkpoint

    def __post_init__(self) -> None:
        if self.config and not self.flat_config:
            self.flat_config = flatten_dict(self.config)
        if "method" in self.flat_config:
            # a run recorded before a config key existed ran with that key's default (new keys keep
            # the old behaviour as their default), so it compares equal to a run that states it
            for key, value in config_defaults().items():
                self.flat_config.setdefault(key, value)

    @property
    def method(self) -> str | None:
        value = self.flat_config.get("method")
        return None if value is None else str(value)

    @property
    def dataset(self) -> str | None:
        value = self.flat_config.get("dataset.name")
        return None if value is None else str(value)

    @property
    def seed(self) -> Any:
        return self.flat_config.get("seed")

    def label(self) -> str:
        """Legend label in words: ``MaskCL, seed 111`` (run ids belong in the trace, not a figure)."""
        from maskcl.report.tables import method_label

        return f"{method_label(self.method)}, seed {self.seed}"

    def fingerprint(self) -> str:
        """Identity of the underlying run, equal across stores that saw the same run.

        A run observed by both the file store and MongoDB (or replayed by ``experiments/sync.py``)
        has the same experiment name, start time and config; DVC records have no start time, so
        their params and metrics identify them (a run-cache restore repeats both exactly).
        """
        payload = {
            "experiment": self.experiment,
            "start": _second(self.start_time),
            "config": self.flat_config,
        }
        if not self.start_time:
            payload["metrics"] = self.metrics
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()


def _second(stamp: str | None) -> str | None:
    # Mongo keeps milliseconds, the file store microseconds: compare to the second.
    return None if not stamp else str(stamp)[:19]


@functools.cache
def config_defaults() -> dict[str, Any]:
    """Every key of :class:`maskcl.config.Config` with its default, dotted."""
    return flatten_dict(Config().to_dict())


def clean_metrics(raw: Any) -> dict[str, dict[str, float]]:
    """Keep ``{protocol: {metric: number}}`` entries; drop anything else (counts stay as floats).

    MongoDB rewrites dots in keys to commas (Sacred's ``force_valid_bson_key``); protocol names
    have no dots, so nothing needs undoing here.
    """
    out: dict[str, dict[str, float]] = {}
    if not isinstance(raw, Mapping):
        return out
    for protocol, values in raw.items():
        if not isinstance(values, Mapping):
            continue
        numbers = {
            str(name): float(value)
            for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if numbers:
            out[str(protocol)] = numbers
    return out


def filter_records(
    records: Iterable[RunRecord],
    *,
    tags: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    statuses: Sequence[str] | None = (COMPLETED,),
    experiments: Sequence[str] | None = None,
) -> list[RunRecord]:
    """Keep records matching every given filter (``None`` = no filter; tags: all must be present).

    Only COMPLETED runs by default: a FAILED or RUNNING run's numbers are partial.
    """
    kept = []
    for record in records:
        if statuses is not None and record.status not in statuses:
            continue
        if tags and not set(tags) <= set(record.tags):
            continue
        if datasets and record.dataset not in datasets:
            continue
        if methods and record.method not in methods:
            continue
        if experiments and record.experiment not in experiments:
            continue
        kept.append(record)
    return kept


def deduplicate(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Drop records whose :meth:`RunRecord.fingerprint` was already seen (first one wins)."""
    seen: set[str] = set()
    kept = []
    for record in records:
        key = record.fingerprint()
        if key in seen:
            continue
        seen.add(key)
        kept.append(record)
    return kept


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def redact_url(url: str) -> str:
    """Hide the password of ``scheme://user:pass@host``: ``scheme://user:***@host``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", url)


def redact_text(text: str, url: str) -> str:
    """Remove a URL's password from any text (e.g. a driver error message) before showing it."""
    match = _USERINFO.search(url)
    text = redact_url(text)
    if match and match.group("password"):
        text = text.replace(match.group("password"), "***")
    return text
