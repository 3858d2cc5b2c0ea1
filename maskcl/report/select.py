"""Which recorded runs a report is about: this experiment's, or an explicit selection.

Why: a Sacred store holds every run ever made on the machine (other experiments, old code,
sweeps), and DVC knows nothing of it. A table of one DVC experiment must come from that
experiment's runs only. The link is content: each evaluate run records the md5 of the metrics
file it wrote (``info.outputs.metrics``), and the report stage depends on those files, so the runs
whose recorded md5 equals the file's are the runs behind it — also when DVC restored the file
from its run cache (the restored file has the md5 of the run that made it). ``--params`` then
keeps, among them, those whose configuration is the experiment's ``params.yaml`` (two settings
can give identical numbers). Cross-experiment tables select explicitly: run ids, tags, DVC
experiment names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from maskcl.config import flatten_dict
from maskcl.report.records import ReportError, RunRecord

log = logging.getLogger(__name__)

EVALUATE, TRAIN = "maskcl_evaluate", "maskcl_train"
# keys that do not define a configuration: the method (one params.yaml, one run per method in the
# pipeline's foreach), paths, devices, worker counts and the experiment-only io group
NOT_SETTINGS = frozenset({
    "method", "dataset.root", "dataset.mask_root", "masks.parsing_dir", "masks.checkpoint", "masks.device",
    "masks.batch_size", "train.device", "train.workers", "eval.batch_size",
})
NOT_SETTING_PREFIXES = ("io.",)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def by_outputs(records: Sequence[RunRecord], files: Sequence[Path]) -> list[RunRecord]:
    """Evaluate runs whose recorded ``metrics`` output has the md5 of one of ``files``.

    Raises :class:`ReportError` naming the file that no recorded run wrote: a table without the
    runs behind it (a store that was emptied, results pulled from elsewhere) is not published.
    """
    kept: list[RunRecord] = []
    for path in files:
        if not path.is_file():
            raise ReportError(f"--outputs '{path}' does not exist (expected a metrics file the evaluate stage wrote)")
        md5 = md5_of(path)
        matched = [r for r in records if r.experiment == EVALUATE and r.outputs.get("metrics") == md5]
        if not matched:
            raise ReportError(
                f"no recorded evaluate run wrote '{path}' (md5 {md5}) among {len(records)} run(s) of the store: "
                "the run store is empty or from another machine; re-run the stage (dvc repro -f evaluate) "
                "or pass the store that holds it"
            )
        kept.extend(r for r in matched if r not in kept)
    return kept


def load_params(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ReportError(f"--params '{path}' does not exist") from None
    except yaml.YAMLError as exc:
        raise ReportError(f"--params '{path}': not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"--params '{path}': expected a mapping of keys, found {type(data).__name__}")
    return flatten_dict(data)


def is_setting(key: str) -> bool:
    return key not in NOT_SETTINGS and not key.startswith(NOT_SETTING_PREFIXES)


def config_differences(record: RunRecord, params: dict[str, Any]) -> list[str]:
    """The setting keys of ``params`` on which the run's configuration differs."""
    diffs = []
    for key, value in params.items():
        if not is_setting(key) or key not in record.flat_config:
            continue
        ours = record.flat_config[key]
        if _same(ours, value):
            continue
        diffs.append(f"{key}={ours!r} (params: {value!r})")
    return diffs


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)  # dvc exp run -S eps=1 writes an int, Sacred keeps it
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def by_params(records: Sequence[RunRecord], path: Path) -> list[RunRecord]:
    """Runs whose configuration equals ``path`` (a params.yaml) on every setting key it holds."""
    params = load_params(path)
    kept, dropped = [], []
    for record in records:
        (dropped if config_differences(record, params) else kept).append(record)
    for record in dropped:
        log.info("run %s left out: its configuration is not %s (%s)", record.run_id, path,
                 "; ".join(config_differences(record, params)[:3]))
    return kept


def by_ids(records: Sequence[RunRecord], ids: Iterable[str]) -> list[RunRecord]:
    """Runs with these ids (as the store names them: file-store folder, MongoDB ``_id``)."""
    wanted = {str(i) for i in ids}
    kept = [r for r in records if r.run_id in wanted]
    missing = wanted - {r.run_id for r in kept}
    if missing:
        raise ReportError(f"--run-id: no run {sorted(missing)} in the store (it holds {len(records)} run(s))")
    return kept


def by_dvc_exp(records: Sequence[RunRecord], names: Iterable[str]) -> list[RunRecord]:
    """Runs recorded under these ``dvc exp run`` experiment names (``info.dvc_exp_name``)."""
    wanted = set(names)
    return [r for r in records if r.provenance.dvc_exp in wanted]


def with_train_runs(selected: Sequence[RunRecord], store: Sequence[RunRecord]) -> list[RunRecord]:
    """The train runs of the selected evaluate runs (their per-epoch curves), by recorded id."""
    wanted = {(r.source, r.train_run_id) for r in selected if r.experiment == EVALUATE and r.train_run_id}
    return [r for r in store if r.experiment == TRAIN and (r.source, r.run_id) in wanted]


def trace(records: Sequence[RunRecord], train_runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Which run is behind which table row: ``[{method, dataset, seed, run, source, train_run}]``."""
    return [
        {
            "method": r.method,
            "dataset": r.dataset,
            "seed": r.seed,
            "run": r.run_id,
            "source": r.source,
            "train_run": r.train_run_id,
            "metrics_md5": r.outputs.get("metrics"),
            "git_commit": r.provenance.git_commit,
            "dvc_exp": r.provenance.dvc_exp,
        }
        for r in records
    ] + [{"method": r.method, "dataset": r.dataset, "seed": r.seed, "run": r.run_id, "source": r.source,
          "experiment": TRAIN} for r in train_runs]
