"""Observers from the environment: file store always, MongoDB only when it answers, rank 0 only,
credentials never shown."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from sacred.observers import FileStorageObserver

from experiments.observers import (
    MaskclMongoObserver,
    default_runs_dir,
    observers_from_env,
    project_root,
    redact,
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MASKCL_MONGO_URL", "MASKCL_MONGO_DB", "MASKCL_RUNS_DIR", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASKCL_MONGO_TIMEOUT_MS", "300")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mongodb://alice:pw123@db.example:27017/maskcl", "mongodb://***:***@db.example:27017/maskcl"),
        ("mongodb+srv://bob:p%40ss@cluster0.x.net/?retryWrites=true", "mongodb+srv://***:***@cluster0.x.net/?retryWrites=true"),
        ("see mongodb://u:v@h:1 and mongodb://h2:2", "see mongodb://***:***@h:1 and mongodb://h2:2"),
        ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
    ],
)
def test_redact_hides_user_and_password(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_also_hides_a_password_quoted_alone() -> None:
    url = "mongodb://alice:s3cret%21@h:1"
    assert redact("auth failed for alice with s3cret! (s3cret%21)", url) == "auth failed for *** with *** (***)"


def test_without_url_only_the_file_store(tmp_path: Path) -> None:
    observers = observers_from_env(tmp_path / "runs")
    assert len(observers) == 1 and isinstance(observers[0], FileStorageObserver)
    assert Path(observers[0].basedir) == (tmp_path / "runs").resolve() and Path(observers[0].basedir).is_absolute()


def test_runs_dir_default_is_absolute_under_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert default_runs_dir() == tmp_path.resolve() / "runs" / "sacred"
    monkeypatch.setenv("MASKCL_RUNS_DIR", "elsewhere/store")
    assert default_runs_dir() == (tmp_path / "sub" / "elsewhere" / "store").resolve()


def test_temp_experiment_copies_keep_the_real_runs_folder(tmp_path: Path) -> None:
    """`dvc exp run --temp/--queue` runs in <project>/.dvc/tmp/exps/...: runs must outlive the copy."""
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    assert project_root(copy) == tmp_path.resolve()


def test_unreachable_mongo_warns_and_keeps_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MASKCL_MONGO_URL", f"mongodb://alice:s3cretpw@127.0.0.1:{closed_port()}")
    with caplog.at_level(logging.WARNING, logger="experiments.observers"):
        observers = observers_from_env(tmp_path / "runs")
    assert [type(o) for o in observers] == [FileStorageObserver]
    assert "did not answer" in caplog.text and "***:***@127.0.0.1" in caplog.text
    assert "s3cretpw" not in caplog.text and "alice" not in caplog.text


def test_no_observers_on_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert observers_from_env(tmp_path / "runs") == []
    monkeypatch.setenv("RANK", "0")
    assert len(observers_from_env(tmp_path / "runs")) == 1


@pytest.mark.mongo
def test_reachable_mongo_adds_the_observer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_server) -> None:
    monkeypatch.setenv("MASKCL_MONGO_URL", mongo_server.url)
    monkeypatch.setenv("MASKCL_MONGO_DB", mongo_server.new_db_name())
    observers = observers_from_env(tmp_path / "runs")
    assert [type(o) for o in observers] == [FileStorageObserver, MaskclMongoObserver]
    file_store, mongo = observers
    assert file_store.priority > mongo.priority  # the file store is asked first and names the run
    assert Path(mongo.failure_dir) == (tmp_path / "runs" / "_mongo_failed").resolve()
    assert "@" not in repr(mongo)
