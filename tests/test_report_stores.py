"""Run stores → RunRecord: Sacred file store, Sacred MongoDB (nx-27017 / mongod), DVC exp show JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from report_runs import DATASET, METHODS, SEEDS, metrics_of, write_runs

from maskcl.report.records import ReportError, deduplicate, filter_records, redact_text, redact_url
from maskcl.report.stores import read_dvc_exps, read_file_store, read_mongo

DVC_SAMPLE = Path(__file__).parent / "data" / "report_dvc_exp_show.json"


@pytest.fixture(scope="module")
def file_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sacred.observers import FileStorageObserver

    root = tmp_path_factory.mktemp("sacred") / "runs"
    write_runs(lambda: FileStorageObserver(str(root)))
    return root


def test_file_store_reads_every_run_with_status(file_store: Path) -> None:
    records = read_file_store(file_store)
    statuses = sorted(r.status for r in records)
    assert statuses.count("COMPLETED") == len(METHODS) * len(SEEDS) + 2  # + 2 train runs
    assert statuses.count("FAILED") == 1
    completed = filter_records(records)  # COMPLETED only by default
    assert all(r.status == "COMPLETED" for r in completed) and len(completed) == 8


def test_file_store_record_fields(file_store: Path) -> None:
    evaluate = [r for r in read_file_store(file_store) if r.experiment == "maskcl_evaluate" and r.status == "COMPLETED"]
    first = next(r for r in evaluate if r.method == "rgb" and r.seed == 2)
    assert first.source == "sacred-file"
    assert first.dataset == DATASET
    assert first.flat_config["dataset.root"] == "/data/VC-Clothes"
    assert first.config["model"]["arch"] == "resnet50"
    assert first.metrics["cc"]["mAP"] == metrics_of("rgb", 2)["cc"]["mAP"]
    assert first.metrics["standard"]["rank1"] == metrics_of("rgb", 2)["standard"]["rank1"]
    assert first.provenance.git_commit == "0123abc" and first.provenance.git_dirty is False
    assert first.provenance.data_hash.endswith(".dir") and first.provenance.dvc_exp == "exp-one"
    assert first.tags == ("paper", "rgb")


def test_file_store_curves_and_filters(file_store: Path) -> None:
    records = read_file_store(file_store)
    train = [r for r in records if r.experiment == "maskcl_train"]
    assert len(train) == 2
    assert train[0].curves["cluster.n_clusters"] == [(e, float(20 + 3 * e + 1)) for e in range(4)]
    assert [p[0] for p in train[0].curves["test.cc.mAP"]] == [0, 1, 2, 3]
    assert {r.method for r in filter_records(records, tags=["rgb"])} == {"rgb"}
    assert filter_records(records, datasets=["ltcc"]) == []
    assert len(filter_records(records, methods=["maskcl"], experiments=["maskcl_evaluate"])) == 3
    assert len(filter_records(records, statuses=None)) == len(records)


def test_file_store_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="nowhere"):
        read_file_store(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# MongoDB
# ---------------------------------------------------------------------------------------------


@pytest.mark.mongo
def test_mongo_store_records(mongo_server) -> None:
    from sacred.observers import MongoObserver

    db_name = mongo_server.new_db_name()

    def factory():
        return MongoObserver(url=mongo_server.url, db_name=db_name)

    write_runs(factory, with_failed=True, with_train=True)
    mongo_records = read_mongo(mongo_server.url, db_name)
    assert sorted(r.status for r in mongo_records).count("COMPLETED") == 8
    assert sum(r.status == "FAILED" for r in mongo_records) == 1
    evaluate = [r for r in filter_records(mongo_records) if r.experiment == "maskcl_evaluate"]
    assert len(evaluate) == 6
    for record in evaluate:
        want = metrics_of(record.method, record.seed)
        for protocol, values in want.items():
            for metric in ("mAP", "rank1", "rank5"):
                assert math.isclose(record.metrics[protocol][metric], values[metric], rel_tol=1e-12)
        assert record.source == "sacred-mongo" and record.provenance.git_commit == "0123abc"
        assert record.tags == ("paper", record.method)
    train = [r for r in mongo_records if r.experiment == "maskcl_train"]
    assert len(train) == 2
    # nx-27017 rounds float arrays to 15 digits: compare with a tolerance
    for step, value in train[0].curves["test.cc.rank1"]:
        assert math.isclose(value, 12.0 * step + 1, rel_tol=1e-12)
    client = mongo_server.client()
    client.drop_database(db_name)
    client.close()


@pytest.mark.mongo
def test_mongo_and_file_store_copies_deduplicate(mongo_server, tmp_path: Path) -> None:
    from sacred.observers import FileStorageObserver, MongoObserver

    db_name = mongo_server.new_db_name()
    root = tmp_path / "runs"
    from sacred import Experiment

    ex = Experiment("maskcl_evaluate", save_git_info=False)
    ex.add_config({"seed": 1, "method": "maskcl", "dataset": {"name": DATASET}})

    @ex.main
    def _main():
        return {"cc": {"mAP": 1.0, "rank1": 2.0}}

    ex.observers[:] = [MongoObserver(url=mongo_server.url, db_name=db_name), FileStorageObserver(str(root))]
    ex.run(options={"--loglevel": "ERROR", "--capture": "no"})
    both = read_mongo(mongo_server.url, db_name) + read_file_store(root)
    assert len(both) == 2 and len(deduplicate(both)) == 1
    client = mongo_server.client()
    client.drop_database(db_name)
    client.close()


def test_mongo_unreachable_error_hides_password() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"mongodb://reporter:s3cretPW@127.0.0.1:{port}/?authSource=admin"
    with pytest.raises(ReportError) as info:
        read_mongo(url, "maskcl", timeout_ms=200)
    message = str(info.value)
    assert "s3cretPW" not in message
    assert "reporter:***@127.0.0.1" in message


def test_redact_url_and_text() -> None:
    assert redact_url("mongodb://u:p%40ss@h:1/db") == "mongodb://u:***@h:1/db"
    assert redact_url("mongodb+srv://alice:pw@cluster.example/x") == "mongodb+srv://alice:***@cluster.example/x"
    assert redact_url("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"
    assert "pw" not in redact_text("auth failed for pw at mongodb://a:pw@h", "mongodb://a:pw@h")


# ---------------------------------------------------------------------------------------------
# DVC
# ---------------------------------------------------------------------------------------------


def test_dvc_sample_parses_experiments_and_baselines() -> None:
    records = read_dvc_exps(DVC_SAMPLE)
    by_id = {r.run_id: r for r in records}
    # the captured sample (dvc 3.67.1, `dvc exp show --json -A`): 2 experiments on the first
    # baseline, 1 on HEAD, 1 queued, 3 baseline commits; the workspace mirrors eps055b
    assert {"eps055", "eps065s2", "eps055b", "queued07"} <= set(by_id)
    assert "workspace" not in by_id
    assert by_id["queued07"].status == "QUEUED"
    exp = by_id["eps065s2"]
    assert exp.status == "COMPLETED" and exp.source == "dvc"
    assert exp.flat_config["eps"] == 0.65 and exp.seed == 2 and exp.dataset == "synthetic"
    assert exp.metrics == {"standard": {"mAP": 58.5, "rank1": 63.5}, "cc": {"mAP": 48.5, "rank1": 53.5}}
    assert exp.provenance.dvc_exp == "eps065s2" and exp.provenance.sacred_run_id == "7"
    assert exp.provenance.git_commit == "46bdf9d2d7b9ea2b8e2bbfa00b6a3795d7140f33"
    completed = deduplicate(filter_records(records))
    # the two older baseline commits hold the same params and metrics (run-cache restore): one kept
    assert sum(r.flat_config["eps"] == 0.6 for r in completed) == 1
    assert "queued07" not in {r.run_id for r in completed}


def test_dvc_parsed_list_and_errors(tmp_path: Path) -> None:
    states = json.loads(DVC_SAMPLE.read_text())
    assert len(read_dvc_exps(states)) == len(read_dvc_exps(DVC_SAMPLE))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="bad.json"):
        read_dvc_exps(bad)
    with pytest.raises(ReportError, match="neither"):
        read_dvc_exps(tmp_path / "missing.json")


@pytest.mark.mongo
def test_report_command_reads_mongo_from_env(mongo_server, tmp_path: Path, monkeypatch, capsys) -> None:
    from sacred.observers import MongoObserver

    from maskcl.cli import main

    db_name = mongo_server.new_db_name()
    write_runs(lambda: MongoObserver(url=mongo_server.url, db_name=db_name), with_failed=False, with_train=False)
    monkeypatch.setenv("MASKCL_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("MASKCL_MONGO_DB", db_name)
    assert main(["report", "--out", str(tmp_path), "--no-published"]) == 0
    printed = capsys.readouterr().out
    assert "62.0 ± 2.0" in printed and "RGB-only (ours)" in printed  # maskcl cc mAP: 60, 62, 64
    assert (tmp_path / "tables" / "main.tex").is_file()
    client = mongo_server.client()
    client.drop_database(db_name)
    client.close()
