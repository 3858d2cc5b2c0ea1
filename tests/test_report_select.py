"""Which runs a report shows: this experiment's (by output md5 and params), explicit selections, sweeps
that join only runs differing in the swept key, one figure/column per distinct protocol."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from maskcl.report import select
from maskcl.report.plots import plot_training, sweep_runs
from maskcl.report.records import ReportError, RunRecord
from maskcl.report.tables import duplicate_protocols, main_table, render_markdown


def record(run_id: str, *, method: str = "maskcl", eps: float = 0.6, epochs: int = 5, seed: int = 1,
           experiment: str = "maskcl_evaluate", md5: str | None = None, train_run: str | None = None,
           cc: float = 10.0, dvc_exp: str | None = None) -> RunRecord:
    from maskcl.report.records import Provenance

    return RunRecord(
        run_id=run_id, source="sacred-file", experiment=experiment, status="COMPLETED",
        config={"seed": seed, "method": method, "eps": eps, "dataset": {"name": "synthetic", "root": f"/r{run_id}"},
                "train": {"epochs": epochs}},
        metrics={"cc": {"mAP": cc, "rank1": cc + 1}, "standard": {"mAP": 50.0, "rank1": 60.0}},
        outputs={"metrics": md5} if md5 else {}, train_run_id=train_run, start_time=f"2026-12-01T10:00:{run_id.zfill(2)}",
        provenance=Provenance(dvc_exp=dvc_exp),
    )


def write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_by_outputs_keeps_the_runs_that_wrote_these_files(tmp_path: Path) -> None:
    ours = write(tmp_path / "m.json", {"maskcl": {"cc": {"mAP": 12.0}}})
    store = [record("2", md5="0" * 32, eps=0.6), record("4", md5=ours, eps=0.55, train_run="3"),
             record("3", experiment="maskcl_train"), record("1", experiment="maskcl_train")]
    kept = select.by_outputs(store, [tmp_path / "m.json"])
    assert [r.run_id for r in kept] == ["4"]
    assert [r.run_id for r in select.with_train_runs(kept, store)] == ["3"]


def test_a_file_no_recorded_run_wrote_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "m.json", {"maskcl": {}})
    with pytest.raises(ReportError, match="no recorded evaluate run wrote"):
        select.by_outputs([record("1", md5="f" * 32)], [tmp_path / "m.json"])
    with pytest.raises(ReportError, match="does not exist"):
        select.by_outputs([], [tmp_path / "missing.json"])


def test_by_params_keeps_the_experiments_configuration(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 1, "method": "maskcl", "eps": 0.55, "dataset": {"root": "x"},
                                      "train": {"epochs": 5}}))
    store = [record("1", eps=0.6), record("2", eps=0.55), record("3", eps=0.55, method="rgb")]
    assert [r.run_id for r in select.by_params(store, params)] == ["2", "3"]  # method and paths aside


def test_explicit_selections() -> None:
    store = [record("1", dvc_exp="exp-a"), record("2", dvc_exp="exp-b"), record("3")]
    assert [r.run_id for r in select.by_ids(store, ["1", "3"])] == ["1", "3"]
    assert [r.run_id for r in select.by_dvc_exp(store, ["exp-b"])] == ["2"]
    with pytest.raises(ReportError, match="no run"):
        select.by_ids(store, ["9"])


def test_sweep_joins_only_runs_that_differ_in_the_swept_key() -> None:
    runs = [record("1", eps=0.5), record("2", eps=0.6), record("3", eps=0.7), record("4", eps=0.55, epochs=2)]
    kept, dropped = sweep_runs(runs, "eps")
    assert [r.run_id for r in kept] == ["1", "2", "3"]
    assert [(r.run_id, keys) for r, keys in dropped] == [("4", ["train.epochs"])]


def test_a_protocol_that_repeats_another_is_one_column() -> None:
    runs = [record("1", cc=10.0), record("2", cc=12.0, seed=2)]
    for run in runs:
        run.metrics["ltcc_cc_maskcl"] = dict(run.metrics["cc"])
    assert duplicate_protocols(runs) == {"ltcc_cc_maskcl": "cc"}
    text = render_markdown(main_table(runs))
    assert "ltcc_cc_maskcl is not shown" in text and "clothes-changing (MaskCL LTCC ids)" not in text.split("\n\n")[1]
    runs[0].metrics["ltcc_cc_maskcl"]["mAP"] = 9.0  # differs in one run: both are shown
    assert duplicate_protocols(runs) == {}


def test_no_figure_for_a_protocol_whose_curves_repeat_another(tmp_path: Path) -> None:
    train = record("1", experiment="maskcl_train")
    curve = [(1, 5.0), (2, 7.0)]
    train.curves = {"test.cc.mAP": curve, "test.cc.rank1": curve, "test.ltcc_cc_maskcl.mAP": curve,
                    "test.ltcc_cc_maskcl.rank1": curve, "test.standard.mAP": [(1, 40.0), (2, 45.0)]}
    names = sorted(p.name for p in plot_training([train], tmp_path))
    assert names == ["curves_cc.png", "curves_standard.png"]
    assert (tmp_path / "curves_cc.pdf").read_bytes().startswith(b"%PDF")


def test_figures_are_byte_identical_run_after_run(tmp_path: Path) -> None:
    train = record("1", experiment="maskcl_train")
    train.curves = {"test.cc.mAP": [(1, 5.0), (2, 7.0)], "cluster.n_clusters": [(1, 20.0), (2, 24.0)]}
    first = {p.name: p.read_bytes() for p in plot_training([train], tmp_path / "a") for p in (p, p.with_suffix(".pdf"))}
    second = {p.name: p.read_bytes() for p in plot_training([train], tmp_path / "b") for p in (p, p.with_suffix(".pdf"))}
    assert first == second and len(first) == 4


def test_an_empty_selection_is_an_error_not_a_published_table(tmp_path: Path, capsys) -> None:
    from maskcl.cli import main

    (tmp_path / "runs").mkdir()
    assert main(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    # log lines of an INFO handler another test's CLI call installed may precede the error line
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True) if " INFO " not in line)
    assert "nothing to report" in err and err.count("\n") == 1
    assert main(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--published-only"]) == 0
