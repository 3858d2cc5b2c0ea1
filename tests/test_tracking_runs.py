"""The Sacred experiments end to end with a stand-in engine: config from params.yaml, the file store,
MongoDB (nx-27017 fixture, or a real mongod), MongoDB down at start or lost mid-run, the DVC
metrics/plots files, interruption and resume, and secrets kept out of every record."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import maskcl.engine
from maskcl.config import Config

try:
    from tests.tracking_support import (FINAL, FakeEngine, eval_updates, file_run, loss_at, run_experiment,
                                        small_updates)
    from tests.mongo_fixture import MongoServer, start_nx27017, stop
except ImportError:  # tests/ itself on sys.path
    from tracking_support import FINAL, FakeEngine, eval_updates, file_run, loss_at, run_experiment, small_updates
    from mongo_fixture import MongoServer, start_nx27017, stop

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MASKCL_MONGO_URL", "MASKCL_MONGO_DB", "MASKCL_RUNS_DIR", "RANK", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASKCL_MONGO_TIMEOUT_MS", "300")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(maskcl.engine, "fit", fake.fit, raising=False)
    monkeypatch.setattr(maskcl.engine, "evaluate_checkpoint", fake.evaluate_checkpoint, raising=False)
    return fake


@pytest.fixture(scope="module")
def experiments() -> Any:
    from experiments import evaluate, train

    return train, evaluate


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------ configuration
def test_params_yaml_is_a_valid_config_with_the_defaults_types() -> None:
    params = yaml.safe_load(PARAMS.read_text())
    Config.from_yaml(PARAMS)  # validates ranges too
    defaults, values = leaves(Config().to_dict()), leaves(params)
    assert sorted(values) == sorted(defaults), "params.yaml must hold every tunable of the Config tree"
    wrong = {k: (type(values[k]).__name__, type(v).__name__) for k, v in defaults.items() if type(values[k]) is not type(v)}
    assert wrong == {}
    for top in ("seed", "method", "eps", "eps_gap", "k1", "k2", "min_samples"):
        assert top in params  # `dvc exp run -S eps=0.6` reaches top-level keys only


def test_sacred_config_is_params_yaml_and_overrides_win(tmp_path: Path, engine: FakeEngine, experiments) -> None:
    train, _ = experiments
    run = run_experiment(train.ex, None, {**small_updates(tmp_path), "eps": 1}, named=(str(PARAMS),))
    assert run.config["eps"] == 1 and engine.fit_calls[0]["eps"] == 1.0
    assert isinstance(engine.fit_calls[0]["eps"], float)  # cast at the boundary (dvc -S eps=1 writes an int)
    assert run.config["k1"] == yaml.safe_load(PARAMS.read_text())["k1"]


def test_a_misspelt_key_in_the_params_file_is_an_error(tmp_path: Path, engine: FakeEngine, experiments) -> None:
    from sacred.utils import ConfigAddedError

    train, _ = experiments
    bad = tmp_path / "bad.yaml"
    bad.write_text("epz: 0.6\n")
    with pytest.raises(ConfigAddedError):
        run_experiment(train.ex, None, small_updates(tmp_path), named=(str(bad),))


# ------------------------------------------------------------------------------ file store
def test_file_store_records_config_metrics_info_and_artifacts(tmp_path: Path, engine: FakeEngine, experiments,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    train, evaluate = experiments
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc12")
    runs = tmp_path / "runs"
    t_run = run_experiment(train.ex, runs, small_updates(tmp_path), named=(str(PARAMS),))
    e_run = run_experiment(evaluate.ex, runs, eval_updates(tmp_path), named=(str(PARAMS),))
    assert (t_run._id, e_run._id, t_run.status, e_run.status) == ("1", "2", "COMPLETED", "COMPLETED")

    rec = file_run(runs, 1)
    assert rec["run"]["experiment"]["name"] == "maskcl_train" and rec["run"]["status"] == "COMPLETED"
    assert rec["config"]["eps"] == 0.6 and rec["config"]["train"]["epochs"] == 3
    series = rec["metrics"]["train.loss"]
    assert series["steps"] == [1, 2, 3]
    assert all(math.isclose(v, loss_at(e), rel_tol=1e-6) for v, e in zip(series["values"], [1, 2, 3]))
    assert rec["metrics"]["test.cc.mAP"]["steps"] == [2, 3]
    info = rec["info"]
    assert info["file_store_id"] == 1 and info["sacred_run_id"] == 1 and info["dvc_exp_name"] == "exp-abc12"
    assert info["device"] == "cpu (fake)" and info["dataset"] == "synthetic" and "fit_s" in info["timings"]
    assert sorted(rec["run"]["artifacts"]) == ["epochs.csv", "test_epochs.csv", "train_metrics.json",
                                               "train_summary.json"]  # never the checkpoint
    assert info["outputs"]["checkpoint"]["size"] > 0

    # the DVC files hold numbers only (no run id, commit, count, timing): identical results, identical bytes
    train_metrics = json.loads((tmp_path / "results/train/metrics.json").read_text())
    assert train_metrics == {"maskcl": {"train": {"loss": round(loss_at(3), 4), "clusters": 13.0}}}
    summary = json.loads((rec["dir"] / "train_summary.json").read_text())
    assert summary["sacred_run_id"] == 1 and summary["protocols"] == FINAL  # ids live in the Sacred record
    rows = list(csv.DictReader((tmp_path / "results/train/epochs.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and set(rows[0]) == {"epoch", "train_loss", "cluster_n_clusters"}
    test_rows = list(csv.DictReader((tmp_path / "results/train/test_epochs.csv").open()))
    assert [(r["epoch"], float(r["cc_mAP"])) for r in test_rows] == [("2", 20.5), ("3", 30.5)]
    assert info["outputs"]["epochs"]["md5"] and info["outputs"]["test_epochs"]["md5"]

    metrics = json.loads((tmp_path / "results/metrics.json").read_text())
    assert metrics == {"maskcl": {"standard": {"mAP": 61.2346, "rank1": 70.5}}}  # the dataset's first protocol
    protocols = list(csv.DictReader((tmp_path / "results/protocols.csv").open()))
    assert [r["protocol"] for r in protocols] == ["standard", "cc"] and "n_queries" not in protocols[0]
    assert math.isclose(float(protocols[1]["rank5"]), 60.125)
    e_rec = file_run(runs, 2)
    e_info = e_rec["info"]
    assert e_info["sacred_run_id"] == 2 and e_info["train_run"]["sacred_run_id"] == 1 and e_info["git_commit"] is not None
    assert e_info["outputs"]["metrics"]["md5"] == hashlib.md5((tmp_path / "results/metrics.json").read_bytes()).hexdigest()
    for protocol, values in FINAL.items():
        for key, value in values.items():
            assert math.isclose(e_info["metrics"][protocol][key], value, rel_tol=1e-6)
    assert e_rec["run"]["result"] == e_info["metrics"]
    assert sorted(e_rec["run"]["artifacts"]) == ["eval_metrics.json", "protocols.csv"]


def test_an_identical_rerun_writes_identical_dvc_files(tmp_path: Path, engine: FakeEngine, experiments) -> None:
    """DVC files carry no run id or timing: re-running the same result leaves their bytes alone."""
    train, evaluate = experiments
    runs = tmp_path / "runs"
    files = ["results/train/metrics.json", "results/train/epochs.csv", "results/train/test_epochs.csv",
             "results/metrics.json", "results/protocols.csv"]

    def once() -> dict[str, bytes]:
        run_experiment(train.ex, runs, small_updates(tmp_path), named=(str(PARAMS),))
        run_experiment(evaluate.ex, runs, eval_updates(tmp_path), named=(str(PARAMS),))
        return {name: (tmp_path / name).read_bytes() for name in files}

    first = once()
    shutil.rmtree(tmp_path / "generated")  # a fresh start, not a resume
    assert once() == first
    assert file_run(runs, 4)["info"]["sacred_run_id"] == 4  # a new run all the same


def test_evaluate_finds_its_train_run_by_checkpoint_md5(tmp_path: Path, engine: FakeEngine, experiments,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC restores a checkpoint folder from its cache without the (dvcignored) marker."""
    train, evaluate = experiments
    runs = tmp_path / "runs"
    monkeypatch.setenv("MASKCL_RUNS_DIR", str(runs))
    run_experiment(train.ex, runs, small_updates(tmp_path), named=(str(PARAMS),))
    (tmp_path / "generated" / "train" / "sacred_run.json").unlink()
    run = run_experiment(evaluate.ex, runs, eval_updates(tmp_path), named=(str(PARAMS),))
    assert run.info["train_run"]["file_store_id"] == 1


def test_io_paths_follow_the_method(tmp_path: Path, engine: FakeEngine, experiments) -> None:
    """The pipeline's foreach runs `with params.yaml method=rgb`: each method its own folder."""
    train, evaluate = experiments
    updates = {"method": "rgb", "train": {"epochs": 3, "eval_step": 2}}
    run_experiment(train.ex, tmp_path / "runs", updates, named=(str(PARAMS),))
    run_experiment(evaluate.ex, tmp_path / "runs", {"method": "rgb"}, named=(str(PARAMS),))
    assert (tmp_path / "generated/train/rgb/last.pt").is_file()
    assert (tmp_path / "results/rgb/epochs.csv").is_file() and (tmp_path / "results/rgb/test_epochs.csv").is_file()
    assert list(json.loads((tmp_path / "results/rgb/metrics.json").read_text())) == ["rgb"]
    assert not (tmp_path / "results/maskcl").exists()


def test_git_dirty_ignores_what_the_pipeline_rewrites(tmp_path: Path) -> None:
    """dvc.lock, params.yaml (-S) and results/ change during `make repro`: the code is still clean."""
    from experiments.common import git_info

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, env=env, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    for name in ("dvc.lock", "params.yaml", "results/maskcl/metrics.json", "maskcl/x.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git("add", "-A")
    git("commit", "-q", "-m", "c")
    for name in ("dvc.lock", "params.yaml", "results/maskcl/metrics.json"):
        (tmp_path / name).write_text("b\n")
    info = git_info(tmp_path)
    assert info["dirty"] is False and sorted(info["changed"]) == ["dvc.lock", "params.yaml", "results/maskcl/metrics.json"]
    (tmp_path / "maskcl/x.py").write_text("b\n")
    assert git_info(tmp_path)["dirty"] is True


def test_data_hash_of_the_synthetic_stage_and_of_data_dvc(tmp_path: Path) -> None:
    from experiments.common import data_hash, data_hashes

    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "synth": {"cmd": "x", "outs": [{"path": "generated/synthetic", "md5": "abc.dir", "size": 3, "nfiles": 2}]}}}))
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "def.dir", "size": 9, "nfiles": 4, "path": "data"}]}))
    hashes = data_hashes(tmp_path)
    assert data_hash(hashes, "synthetic") == "abc.dir" and data_hash(hashes, "ltcc") == "def.dir"


# ------------------------------------------------------------------------------ MongoDB
def check_mongo_records(db: Any, runs: Path) -> None:
    import gridfs

    mine = {"info.file_store_dir": str(runs.resolve())}  # nx-27017 --db FILE shares collections between dbs
    train_doc = db.runs.find_one({**mine, "experiment.name": "maskcl_train"})
    eval_doc = db.runs.find_one({**mine, "experiment.name": "maskcl_evaluate"})
    assert train_doc["status"] == eval_doc["status"] == "COMPLETED"
    assert train_doc["config"]["eps"] == 0.6 and train_doc["config"]["train"]["epochs"] == 3
    assert train_doc["info"]["file_store_id"] == 1 and train_doc["info"]["file_store_dir"] == str(runs.resolve())
    series = {m["name"]: m for m in db.metrics.find({"run_id": train_doc["_id"]})}
    assert set(series) == {"train.loss", "cluster.n_clusters", "test.cc.mAP"}
    assert series["train.loss"]["steps"] == [1, 2, 3]
    for value, epoch in zip(series["train.loss"]["values"], [1, 2, 3]):
        assert math.isclose(value, loss_at(epoch), rel_tol=1e-6)
    fs = gridfs.GridFS(db)
    artifacts = {a["name"]: json.loads(fs.get(a["file_id"]).read()) for a in train_doc["artifacts"] if a["name"].endswith(".json")}
    assert artifacts["train_summary.json"]["sacred_run_id"] == 1
    for protocol, values in FINAL.items():
        assert math.isclose(eval_doc["info"]["metrics"][protocol]["mAP"], values["mAP"], rel_tol=1e-6)
        assert math.isclose(eval_doc["result"][protocol]["rank1"], values["rank1"], rel_tol=1e-6)


def run_both_with_mongo(server: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiments) -> Any:
    train, evaluate = experiments
    db_name = server.new_db_name()
    monkeypatch.setenv("MASKCL_MONGO_URL", server.url)
    monkeypatch.setenv("MASKCL_MONGO_DB", db_name)
    runs = tmp_path / "runs"
    run_experiment(train.ex, runs, small_updates(tmp_path), named=(str(PARAMS),))
    run_experiment(evaluate.ex, runs, eval_updates(tmp_path), named=(str(PARAMS),))
    client = server.client()
    try:
        check_mongo_records(client[db_name], runs)
    finally:
        client.close()
    return runs


@pytest.mark.mongo
def test_mongo_observer_records_config_metrics_and_artifacts(mongo_server: MongoServer, tmp_path: Path,
                                                             engine: FakeEngine, experiments, monkeypatch) -> None:
    runs = run_both_with_mongo(mongo_server, tmp_path, monkeypatch, experiments)
    assert file_run(runs, 1)["run"]["status"] == "COMPLETED"  # the file store has it too


@pytest.mark.mongo
@pytest.mark.skipif(not os.environ.get("MASKCL_TEST_MONGO_URL"), reason="set MASKCL_TEST_MONGO_URL to a real mongod")
def test_mongo_observer_against_a_real_mongod(tmp_path: Path, engine: FakeEngine, experiments, monkeypatch) -> None:
    server = MongoServer(url=os.environ["MASKCL_TEST_MONGO_URL"], kind="mongod")
    run_both_with_mongo(server, tmp_path, monkeypatch, experiments)


def test_mongo_unreachable_at_start_the_run_completes_in_files(tmp_path: Path, engine: FakeEngine, experiments,
                                                               monkeypatch, caplog) -> None:
    train, _ = experiments
    monkeypatch.setenv("MASKCL_MONGO_URL", f"mongodb://alice:s3cretpw@127.0.0.1:{closed_port()}/?authSource=admin")
    run = run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    assert run.status == "COMPLETED"
    rec = file_run(tmp_path / "runs", run._id)
    assert rec["run"]["status"] == "COMPLETED" and rec["metrics"]["train.loss"]["steps"] == [1, 2, 3]
    assert "did not answer" in caplog.text


@pytest.mark.mongo
def test_mongo_lost_mid_run_the_run_completes_in_files(tmp_path: Path, engine: FakeEngine, experiments,
                                                       monkeypatch) -> None:
    train, _ = experiments
    proc, url = start_nx27017(tmp_path / "nx")
    monkeypatch.setenv("MASKCL_MONGO_URL", url)
    engine.on_epoch = lambda epoch: stop(proc) if epoch == 1 else None
    try:
        run = run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    finally:
        stop(proc)
    assert run.status == "COMPLETED"
    rec = file_run(tmp_path / "runs", run._id)
    assert rec["run"]["status"] == "COMPLETED" and rec["metrics"]["train.loss"]["steps"] == [1, 2, 3]
    assert sorted(rec["run"]["artifacts"]) == ["epochs.csv", "test_epochs.csv", "train_metrics.json", "train_summary.json"]
    failed = list((tmp_path / "runs" / "_mongo_failed").glob("sacred_mongo_fail_*.pickle"))
    assert len(failed) == 1  # the MongoObserver's own last resort, beside the file store


def test_no_password_in_any_record(tmp_path: Path, engine: FakeEngine, experiments, monkeypatch, caplog) -> None:
    train, _ = experiments
    monkeypatch.setenv("MASKCL_MONGO_URL", f"mongodb://alice:s3cretpw@127.0.0.1:{closed_port()}")
    run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    texts = [p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    texts += [p.read_text() for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert texts and not any("s3cretpw" in text for text in texts)
    assert "s3cretpw" not in caplog.text


# ------------------------------------------------------------------------------ interruption and resume
SCRIPT = """
import os, sys, time
sys.path[:0] = [{tests!r}, {repo!r}]
import maskcl.engine
from tracking_support import FakeEngine
fake = FakeEngine()
def hang(epoch):
    if epoch == 2:
        open({ready!r}, "w").close()
        time.sleep(60)
fake.on_epoch = hang
maskcl.engine.fit = fake.fit
from experiments import train
from experiments.config import run_commandline
sys.exit(run_commandline(train.ex, ["train.py", "with", {params!r}, "train.epochs=3", "train.eval_step=2",
    "io.out_dir={root}/generated/train", "io.metrics={root}/results/train/metrics.json",
    "io.epochs={root}/results/train/epochs.csv"], {runs!r}))
"""


def start_and_kill(tmp_path: Path, sig: int) -> int:
    ready = tmp_path / "ready"
    script = SCRIPT.format(tests=str(TESTS), repo=str(REPO), ready=str(ready), params=str(PARAMS),
                           root=str(tmp_path), runs=str(tmp_path / "runs"))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "the training process died before epoch 2"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    return proc.wait(timeout=30)


def test_sigterm_marks_the_run_interrupted(tmp_path: Path) -> None:
    start_and_kill(tmp_path, signal.SIGTERM)
    assert file_run(tmp_path / "runs", 1)["run"]["status"] == "INTERRUPTED"


def test_kill_9_then_resume_records_which_run_it_continues(tmp_path: Path, engine: FakeEngine, experiments) -> None:
    train, _ = experiments
    assert start_and_kill(tmp_path, signal.SIGKILL) == -signal.SIGKILL
    assert file_run(tmp_path / "runs", 1)["run"]["status"] == "RUNNING"  # nobody could mark it

    run = run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    assert engine.fit_calls[0]["start"] == 2  # the stand-in resumed after the two finished epochs
    assert run.info["resumed_from_run"]["sacred_run_id"] == 1
    dead = file_run(tmp_path / "runs", 1)["run"]
    assert dead["status"] == "INTERRUPTED" and dead["resumed_by"] == 2
    rows = list(csv.DictReader((tmp_path / "results/train/epochs.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # epochs of the killed attempt come from the history
    summary = json.loads((file_run(tmp_path / "runs", 2)["dir"] / "train_summary.json").read_text())
    assert summary["resumed_from_run"]["sacred_run_id"] == 1


def test_other_torchrun_ranks_train_but_record_and_write_nothing(tmp_path: Path, engine: FakeEngine, experiments,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every process runs the experiment; RANK 1 only runs the engine (rank 0 records)."""
    train, _ = experiments
    monkeypatch.setenv("RANK", "1")
    run = run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    assert run.status == "COMPLETED" and run.result == FINAL and len(engine.fit_calls) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    assert not (tmp_path / "generated" / "train" / "sacred_run.json").exists()  # rank 0's marker only


def test_checkpoint_of_another_config_is_not_resumed(tmp_path: Path, engine: FakeEngine, experiments) -> None:
    """DVC keeps the persisted checkpoint folder across `dvc exp run -S eps=...`: start fresh."""
    train, _ = experiments
    run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    run = run_experiment(train.ex, tmp_path / "runs", {**small_updates(tmp_path), "eps": 0.55}, named=(str(PARAMS),))
    assert [c["start"] for c in engine.fit_calls] == [0, 0]
    assert "resumed_from_run" not in run.info
    # the first run's folder is set aside, never deleted (a killed run is in no DVC cache)
    kept = tmp_path / "generated" / "train.superseded-run1"
    assert json.loads((kept / "last.pt").read_text()) == {"epoch": 3}
    assert json.loads((tmp_path / "generated" / "train" / "last.pt").read_text()) == {"epoch": 3}


def test_checkpoint_of_other_code_is_not_resumed(tmp_path: Path, engine: FakeEngine, experiments, monkeypatch) -> None:
    """DVC re-runs train when maskcl/ changes; continuing the old run would report stale results."""
    train, _ = experiments
    run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    monkeypatch.setattr(train, "code_digest", lambda: "f" * 64)  # as if a loss were fixed
    run = run_experiment(train.ex, tmp_path / "runs", small_updates(tmp_path), named=(str(PARAMS),))
    assert [c["start"] for c in engine.fit_calls] == [0, 0]
    assert "resumed_from_run" not in run.info
    assert (tmp_path / "generated" / "train.superseded-run1" / "last.pt").is_file()


def test_code_digest_follows_the_library_source(tmp_path: Path) -> None:
    from experiments.common import code_digest

    (tmp_path / "maskcl" / "sub").mkdir(parents=True)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "maskcl" / "sub" / "losses.py").write_text("GAMMA = 4\n")
    (tmp_path / "experiments" / "train.py").write_text("pass\n")
    before = code_digest(tmp_path)
    assert code_digest(tmp_path) == before
    (tmp_path / "maskcl" / "sub" / "losses.py").write_text("GAMMA = 2\n")
    assert code_digest(tmp_path) != before
