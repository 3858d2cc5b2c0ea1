"""`python -m experiments.sync`: file-store runs re-sent to MongoDB, once, with metrics and artifacts."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import pytest

import maskcl.engine

try:
    from tests.tracking_support import FINAL, FakeEngine, eval_updates, loss_at, run_experiment, small_updates
except ImportError:
    from tracking_support import FINAL, FakeEngine, eval_updates, loss_at, run_experiment, small_updates

from experiments import sync as sync_mod

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
pytestmark = pytest.mark.mongo


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEngine:
    for name in ("MASKCL_MONGO_URL", "MASKCL_MONGO_DB", "MASKCL_RUNS_DIR", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASKCL_MONGO_TIMEOUT_MS", "300")
    monkeypatch.chdir(tmp_path)
    fake = FakeEngine()
    monkeypatch.setattr(maskcl.engine, "fit", fake.fit, raising=False)
    monkeypatch.setattr(maskcl.engine, "evaluate_checkpoint", fake.evaluate_checkpoint, raising=False)
    return fake


def offline_runs(tmp_path: Path) -> Path:
    """A train and an evaluate run recorded while no MongoDB was configured."""
    from experiments import evaluate, train

    runs = tmp_path / "runs"
    run_experiment(train.ex, runs, small_updates(tmp_path), named=(PARAMS,))
    run_experiment(evaluate.ex, runs, eval_updates(tmp_path), named=(PARAMS,))
    return runs


def counts(db: Any) -> tuple[int, int, int]:
    import gridfs

    # GridFS through its API: nx-27017 refuses dotted collection names such as fs.files
    return db.runs.count_documents({}), db.metrics.count_documents({}), len(list(gridfs.GridFS(db).find()))


def test_sync_sends_runs_once_with_metrics_and_artifacts(tmp_path: Path, mongo_server) -> None:
    import gridfs

    runs = offline_runs(tmp_path)
    db_name = mongo_server.new_db_name()
    first = sync_mod.sync(runs, mongo_server.url, db_name)
    assert (sorted(first.inserted), first.updated, first.skipped) == (["1", "2"], [], [])
    client = mongo_server.client()
    db = client[db_name]
    try:
        mine = {"info.file_store_dir": str(runs.resolve())}  # nx-27017 --db FILE shares collections between dbs
        train_doc = db.runs.find_one({**mine, "info.file_store_id": 1})
        assert train_doc["status"] == "COMPLETED" and train_doc["experiment"]["name"] == "maskcl_train"
        assert train_doc["config"]["eps"] == 0.6 and train_doc["info"]["file_store_dir"] == str(runs.resolve())
        series = db.metrics.find_one({"run_id": train_doc["_id"], "name": "train.loss"})
        assert series["steps"] == [1, 2, 3]
        assert all(math.isclose(v, loss_at(e), rel_tol=1e-6) for v, e in zip(series["values"], [1, 2, 3]))
        assert {m["name"] for m in train_doc["info"]["metrics"]} == {"train.loss", "cluster.n_clusters", "test.cc.mAP"}
        fs = gridfs.GridFS(db)
        names = {a["name"]: a["file_id"] for a in train_doc["artifacts"]}
        assert json.loads(fs.get(names["train_summary.json"]).read())["sacred_run_id"] == 1
        assert train_doc["experiment"]["sources"] and all(fs.exists(fid) for _, fid in train_doc["experiment"]["sources"])
        eval_doc = db.runs.find_one({**mine, "info.file_store_id": 2})
        assert math.isclose(eval_doc["info"]["metrics"]["cc"]["mAP"], FINAL["cc"]["mAP"], rel_tol=1e-6)

        before = counts(db)
        second = sync_mod.sync(runs, mongo_server.url, db_name)
        assert (second.inserted, second.updated, sorted(second.skipped)) == ([], [], ["1", "2"])
        assert counts(db) == before  # nothing duplicated
    finally:
        client.close()


def test_a_partial_copy_is_replaced_in_place(tmp_path: Path, mongo_server, monkeypatch) -> None:
    """MongoDB went away mid-run: its copy says RUNNING; the file store has the whole run."""
    from experiments import train

    db_name = mongo_server.new_db_name()
    monkeypatch.setenv("MASKCL_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("MASKCL_MONGO_DB", db_name)
    runs = tmp_path / "runs"
    run_experiment(train.ex, runs, small_updates(tmp_path), named=(PARAMS,))
    client = mongo_server.client()
    db = client[db_name]
    try:
        mine = {"info.file_store_dir": str(runs.resolve())}  # nx-27017 --db FILE shares collections between dbs
        live = db.runs.find_one(mine)
        db.runs.update_one({"_id": live["_id"]}, {"$set": {"status": "RUNNING"}})
        db.metrics.delete_many({"run_id": live["_id"], "name": "test.cc.mAP"})  # lost with the server
        report = sync_mod.sync(runs, mongo_server.url, db_name)
        assert report.updated == ["1"] and report.inserted == []
        assert db.runs.count_documents(mine) == 1
        doc = db.runs.find_one({"_id": live["_id"]})
        assert doc["status"] == "COMPLETED"
        assert sorted(m["name"] for m in db.metrics.find({"run_id": live["_id"]})) == [
            "cluster.n_clusters", "test.cc.mAP", "train.loss"]
        import gridfs

        fs = gridfs.GridFS(db)
        assert len(doc["artifacts"]) == 4 and all(fs.exists(a["file_id"]) for a in doc["artifacts"])
        for name in ("train_metrics.json", "epochs.csv"):  # the partial copy's files were replaced, not kept
            assert len(list(fs.find({"filename": f"artifact://runs/{live['_id']}/{name}"}))) == 1
        assert sync_mod.sync(runs, mongo_server.url, db_name).skipped == ["1"]
    finally:
        client.close()


def test_command_line(tmp_path: Path, mongo_server, monkeypatch, capsys) -> None:
    runs = offline_runs(tmp_path)
    assert sync_mod.main(["--runs", str(runs)]) == 2  # no URL
    monkeypatch.setenv("MASKCL_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("MASKCL_MONGO_DB", mongo_server.new_db_name())
    assert sync_mod.main(["--runs", str(runs), "--dry-run"]) == 0
    assert "2 new" in capsys.readouterr().out
    assert sync_mod.main(["--runs", str(runs)]) == 0 and "2 new" in capsys.readouterr().out
    assert sync_mod.main(["--runs", str(runs)]) == 0 and "2 already there" in capsys.readouterr().out


def test_unreachable_server_is_one_line_without_the_password(tmp_path: Path, monkeypatch, capsys) -> None:
    runs = offline_runs(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MASKCL_MONGO_URL", f"mongodb://alice:s3cretpw@127.0.0.1:{port}")
    assert sync_mod.main(["--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert "s3cretpw" not in err
    # log output of a handler another test's CLI call installed may precede it: the error is the lines naming the server
    naming = [line for line in err.splitlines() if "127.0.0.1" in line]
    assert len(naming) == 1 and naming[0] == err.rstrip("\n").splitlines()[-1]
