"""Reliability, round two (issue 15): no lost runs, no late failures, no tracebacks.

One test per case, each asserting the one-line message (what, where, what was expected), the exit
code, and that nothing computed before the fault is lost or left half-written:

1. two trainings into one ``--out`` (two real processes) and a stale lock;
2. every split's images (and the train masks) checked at setup; an evaluation failure keeps the epoch;
3. a real ``kill -9`` while ``last.pt`` is written, then the stale temp file cleaned at start;
4. scientific notation for float keys (``--set``, Sacred ``with``, params.yaml, ``dvc exp run -S``);
5. one line instead of a traceback (``--out`` a file, ``--summary`` a folder, full disk, the Sacred
   entry points);
6. messages (a non-group key, a truncated mask, a refused pickle, a text checkpoint, a folder);
7. resuming with fewer epochs, ``last.pt`` following the umask;
8. PRCC test files named without a camera letter.

Trainings use the tiny LTCC-named tree of ``tests/engine_fixtures.py`` (6 ids, 32×16 PNGs).
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

try:
    from tests.engine_fixtures import make_ltcc_tree, make_tiny_tree, patch_collaborators, tiny_config, truncate_half
except ImportError:  # rootdir-less import mode
    from engine_fixtures import make_ltcc_tree, make_tiny_tree, patch_collaborators, tiny_config, truncate_half

from maskcl import atomic
from maskcl.cli import main
from maskcl.config import Config
from maskcl.data.integrity import inspect_image
from maskcl.engine import trainer
from maskcl.engine.checkpoint import load_checkpoint, save_checkpoint
from maskcl.engine.lock import LOCK_NAME, train_lock
from maskcl.errors import ConfigError, DatasetError, MaskError, OutputLockedError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- helpers


def _params(tmp: Path, splits, mask_root, **overrides) -> Path:
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_config(splits.root, mask_root, **overrides).to_dict()))
    return params


def _error_lines(err: str, prefix: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(prefix)]


def _one_error(capsys, prefix: str = "maskcl") -> str:
    err = capsys.readouterr().err
    lines = _error_lines(err, f"{prefix}")
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("_time_s")} for h in history]


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{what} never happened: {log.read_text()}"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: 2 OpenMP threads on the 2 shared cores make tiny steps far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    """Read-only shared tree; tests that corrupt files build their own."""
    return make_ltcc_tree(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory: pytest.TempPathFactory):
    """A finished 2-epoch run (``maskcl train``, in process) and its params file; read-only."""
    splits, mask_root = tree
    tmp = tmp_path_factory.mktemp("trained")
    params = _params(tmp, splits, mask_root)
    torch.set_num_threads(1)
    assert main(["train", "--params", str(params), "--out", str(tmp / "run")]) == 0
    return params, tmp / "run"


# ---------------------------------------------------------------- 1. one training per folder
# a `maskcl train` that stops inside epoch 1 until `go` exists (so a second one can try the folder)
STALL_IN_EPOCH_1 = r"""
import sys, time
from pathlib import Path
from maskcl.cli import main
from maskcl.engine import trainer
marker, go, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
real_epoch = trainer.Engine._train_epoch
def train_epoch(self, epoch, labels, nbrs):
    if epoch == 0:
        marker.write_text("in epoch 1")
        while not go.exists():
            time.sleep(0.05)
    return real_epoch(self, epoch, labels, nbrs)
trainer.Engine._train_epoch = train_epoch
sys.exit(main(argv))
"""


def test_second_training_into_one_folder_refuses_at_once_naming_folder_and_pid(tree, tmp_path: Path) -> None:
    """Two real processes: the second exits 2 with one line naming the folder and the first's PID;
    the first goes on undisturbed and its run is whole (its seed, its metrics)."""
    splits, mask_root = tree
    params = _params(tmp_path, splits, mask_root, **{"train.epochs": 1})
    out, marker, go = tmp_path / "R", tmp_path / "in-epoch-1", tmp_path / "go"
    first_log = tmp_path / "first.log"
    with first_log.open("w") as log:
        first = subprocess.Popen(
            [sys.executable, "-c", STALL_IN_EPOCH_1, str(marker), str(go), "train", "--params", str(params),
             "--set", "seed=111", "--out", str(out)], cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(marker, first, first_log, "epoch 1 of the first training")
            assert (out / LOCK_NAME).read_text().strip() == str(first.pid)
            second = subprocess.run(
                [sys.executable, "-m", "maskcl.cli", "train", "--params", str(params), "--set", "seed=5",
                 "--out", str(out)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            lines = _error_lines(second.stderr, "maskcl train: error:")
            assert lines == [
                f"maskcl train: error: '{out}' is in use by another training (PID {first.pid} holds "
                f"'{LOCK_NAME}'); wait for it to finish, stop it, or train into another --out folder"
            ], second.stderr
            # refused before any work: no data loaded, no model built, no epoch run (a wall-clock
            # bound would be flaky on the shared 2-core machine)
            assert "Traceback" not in second.stderr and "epoch" not in second.stderr and "images" not in second.stderr
            go.write_text("")
            assert first.wait(timeout=240) == 0, first_log.read_text()
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and state["config"]["seed"] == 111  # the first run, whole
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1
    assert not (out / LOCK_NAME).exists()  # released and removed at the end


def test_lock_file_of_a_dead_process_never_blocks(tmp_path: Path) -> None:
    """A lock file left by a killed run (a PID inside, no lock held) is taken over."""
    out = tmp_path / "R"
    out.mkdir()
    (out / LOCK_NAME).write_text("999999999\n")
    with train_lock(out) as path:
        assert path.read_text().strip() == str(os.getpid())
    assert not (out / LOCK_NAME).exists()


def test_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path: Path) -> None:
    out = tmp_path / "R"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from maskcl.engine.lock import train_lock\n"
         "with train_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"'{out}' is in use by another training \(PID {holder.pid} holds"):
            with train_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with train_lock(out):  # the kernel dropped the killed holder's lock
        with train_lock(out):  # maskcl train and the Sacred experiment hold it around fit, which takes it too
            assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert (out / LOCK_NAME).exists()  # the inner exit does not release the outer hold
    assert not (out / LOCK_NAME).exists()


def test_sacred_train_refuses_a_held_folder_before_touching_it(tmp_path: Path, monkeypatch) -> None:
    """The experiment takes the lock before its resume decision: no marker written, no folder set aside."""
    import maskcl.engine.lock as lock_module
    from experiments import train as train_exp

    try:
        from tests.tracking_support import run_experiment, small_updates
    except ImportError:  # rootdir-less import mode
        from tracking_support import run_experiment, small_updates

    updates = small_updates(tmp_path)
    out = Path(updates["io"]["out_dir"])
    out.mkdir(parents=True)
    (out / "last.pt").write_text(json.dumps({"epoch": 1}))
    (out / "sacred_run.json").write_text(json.dumps({"sacred_run_id": "other-run", "config": {}}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with train_lock(out):  # held as another process would: the experiment's own open+flock conflicts
        monkeypatch.setattr(lock_module, "_held", {})  # this process no longer counts as the holder
        with pytest.raises(OutputLockedError, match=rf"'{out}' is in use by another training \(PID {os.getpid()}"):
            run_experiment(train_exp.ex, tmp_path / "runs", updates)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME} == before
    assert not list(tmp_path.glob("generated/train.superseded-run*"))


# ---------------------------------------------------------------- 2. every split checked at setup
@pytest.mark.parametrize("split,corrupt", [("gallery", "truncated"), ("query", "text")])
def test_unreadable_test_image_fails_at_setup_before_any_model(tmp_path: Path, monkeypatch, split, corrupt) -> None:
    splits, mask_root = make_tiny_tree(tmp_path)
    patch_collaborators(monkeypatch, splits)
    bad = getattr(splits, split)[1].path
    truncate_half(bad) if corrupt == "truncated" else bad.write_text("not an image\n")
    built = []
    monkeypatch.setattr(trainer, "build_network", lambda *a, **k: built.append(1))
    with pytest.raises(DatasetError) as info:
        trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"image '{bad}' cannot be read (")
    assert "expected a readable image file (PNG/JPEG) — replace or remove it" in message
    assert f"1 of {len(getattr(splits, split))} {split} images of synthetic" in message and "\n" not in message
    assert not built and not (tmp_path / "run" / "last.pt").exists()


def test_truncated_train_mask_fails_at_setup_as_a_mask_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    splits, mask_root = make_tiny_tree(tmp_path)
    patch_collaborators(monkeypatch, splits)
    record = sorted(splits.train, key=lambda r: str(r.path))[2]
    mask = mask_root / "train" / record.path.name
    truncate_half(mask)  # header intact: the size check alone passes it
    with pytest.raises(MaskError) as info:
        trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"mask '{mask}' cannot be read (OSError: image file is truncated")
    assert "expected a whole PNG mask — regenerate the masks with `maskcl masks --force`" in message
    assert "\n" not in message and not (tmp_path / "run" / "last.pt").exists()


def test_maskcl_data_checks_every_split_and_keeps_the_previous_summary(tmp_path: Path, capsys) -> None:
    splits, _ = make_ltcc_tree(tmp_path)
    summary = tmp_path / "data.json"
    assert main(["data", "--set", f"dataset.root={splits.root}", "--summary", str(summary)]) == 0
    before = summary.read_bytes()
    bad = splits.gallery[0].path
    truncate_half(bad)
    capsys.readouterr()
    assert main(["data", "--set", f"dataset.root={splits.root}", "--summary", str(summary)]) == 2
    line = _one_error(capsys, "maskcl data: error:")
    assert f"image '{bad}' cannot be read" in line and "gallery images of synthetic" in line
    assert summary.read_bytes() == before and sorted(p.name for p in tmp_path.glob("*.json*")) == ["data.json"]


def test_whole_file_check_reads_ends_and_accepts_bytes_after_the_end_marker(tmp_path: Path) -> None:
    image = Image.new("RGB", (16, 32), (200, 10, 10))
    whole, padded, cut = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    image.save(whole, quality=90)
    padded.write_bytes(whole.read_bytes() + b"trailing metadata")  # legal after FF D9
    cut.write_bytes(whole.read_bytes()[:-40])
    assert inspect_image(whole) == ((16, 32), None) and inspect_image(padded) == ((16, 32), None)
    size, problem = inspect_image(cut)
    assert size is None and "truncated" in problem.lower()


def test_evaluation_failure_keeps_the_trained_epoch_and_the_rerun_scores_it(trained, tmp_path, capsys, monkeypatch) -> None:
    """Saved when the evaluation raises: the one-line error names the saved checkpoint; the re-run scores
    that epoch first and ends exactly as the uninterrupted run (``trained``) did."""
    params, whole = trained
    real = trainer.evaluate_model

    def unreadable_gallery(model, splits, *args, **kwargs):
        raise DatasetError(f"image '{splits.gallery[0].path}' cannot be read (OSError: image file is truncated)")

    monkeypatch.setattr(trainer, "evaluate_model", unreadable_gallery)
    out = tmp_path / "run"
    assert main(["train", "--params", str(params), "--out", str(out)]) == 2
    line = _one_error(capsys, "maskcl train: error:")
    assert line.startswith("maskcl train: error: evaluation after epoch 1: image '") and "cannot be read" in line
    assert line.endswith(f"(the trained epoch is saved in '{out / 'last.pt'}': fix this and run again to resume)")
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 1 and "test" not in saved["history"][-1]
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]

    monkeypatch.setattr(trainer, "evaluate_model", real)
    assert main(["train", "--params", str(params), "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())
    assert _without_timings(json.loads((out / "history.json").read_text())) == _without_timings(
        json.loads((whole / "history.json").read_text()))  # epoch 1 was scored on the re-run


# ---------------------------------------------------------------- 3. kill -9 while last.pt is written
# a `maskcl train` whose second checkpoint write (epoch 2, one write per epoch) stops half-way
HANG_IN_SAVE_2 = r"""
import io, os, sys, time
from pathlib import Path
from maskcl.cli import main
from maskcl.engine import checkpoint
marker, argv = Path(sys.argv[1]), sys.argv[2:]
real_save, calls = checkpoint.torch.save, []
def save(obj, handle, *args, **kwargs):
    calls.append(1)
    if len(calls) != 2:
        return real_save(obj, handle, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    handle.flush()
    os.fsync(handle.fileno())
    marker.write_text("half of last.pt written")
    time.sleep(300)
checkpoint.torch.save = save
sys.exit(main(argv))
"""


def test_kill_9_while_saving_leaves_a_temp_file_the_next_run_removes(tree, tmp_path: Path) -> None:
    """A real SIGKILL mid-write: last.pt stays the previous whole epoch, a `last.pt.<random>.tmp`
    and the dead process's lock file remain; the next run logs the removal, is not blocked by the
    lock, resumes after epoch 1 and finishes with no temp file left."""
    splits, mask_root = tree
    params = _params(tmp_path, splits, mask_root, **{"train.iters": 1})
    out, marker, log_path = tmp_path / "R", tmp_path / "mid-save", tmp_path / "killed.log"
    args = ["train", "--params", str(params), "--out", str(out)]
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", HANG_IN_SAVE_2, str(marker), *args],
                                cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(marker, proc, log_path, "the second checkpoint write")
            proc.kill()  # SIGKILL
            assert proc.wait(timeout=30) == -9
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    temps = list(out.glob("last.pt.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    assert (out / LOCK_NAME).read_text().strip() == str(proc.pid)  # the dead holder's file, unlocked
    assert load_checkpoint(out / "last.pt")["epoch"] == 1

    rerun = subprocess.run([sys.executable, "-m", "maskcl.cli", *args], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    assert f"removed 1 unfinished temp file(s) left in '{out}' by an interrupted run: {temps[0].name} (" in rerun.stderr
    assert "resumed from" in rerun.stderr and "after epoch 1" in rerun.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "last.pt", "metrics.json", "timings.json"]


def test_stale_temp_cleanup_takes_only_the_projects_own_temp_files(tmp_path: Path) -> None:
    own = ["last.pt.k3j_2a.tmp", ".metrics.json.x81kq.tmp", "history.json.tmp", ".sacred_run.json.tmp"]
    other = ["notes.tmp", "last.pt", "data.tmp.txt", "my.tmp"]
    for name in own + other:
        (tmp_path / name).write_text("x")
    removed = atomic.remove_stale_temps(tmp_path)
    assert sorted(name for name, _ in removed) == sorted(own)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(other)


# ---------------------------------------------------------------- 4. scientific notation
@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("1.0e12", 1.0e12), ("2.5E-3", 2.5e-3), (".5", 0.5)])
def test_float_keys_accept_scientific_notation_read_as_strings(text: str, value: float) -> None:
    assert Config.from_dict({"train": {"lr": text}}).train.lr == value
    assert yaml.safe_load(f"lr: {text}")["lr"] in (text, value)  # YAML 1.1 reads 1e-4 as a string


@pytest.mark.parametrize("text", ["abc", "1e", "e5", "nan", "1.2.3", ""])
def test_float_keys_still_reject_what_is_not_a_number(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"'train.lr' must be a number, found '{text}'"):
        Config.from_dict({"train": {"lr": text}})


def test_int_keys_do_not_take_float_text() -> None:
    with pytest.raises(ConfigError, match="'train.epochs' must be an integer, found '1e3'"):
        Config.from_dict({"train": {"epochs": "1e3"}})


def test_scientific_notation_in_set_and_params_yaml(tmp_path: Path) -> None:
    from maskcl.cli import build_parser, config_from_args

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  lr: 1e-4\n  weight_decay: 5.0e-4\n")
    assert Config.from_yaml(params).train.lr == 1e-4
    args = build_parser().parse_args(["train", "--params", str(params), "--set", "train.lr=1.0e12", "--out", "x"])
    cfg = config_from_args(args)
    assert cfg.train.lr == 1e12 and cfg.train.weight_decay == 5e-4


def test_scientific_notation_through_sacred_with_and_its_params_file(tmp_path: Path) -> None:
    from sacred import Experiment

    from experiments.config import build_config, configure

    ex = configure(Experiment("sci_notation", save_git_info=False), {})

    @ex.main
    def run(_config):
        cfg, _ = build_config(_config)
        return [cfg.train.lr, cfg.train.weight_decay, cfg.eps]

    params = tmp_path / "params.yaml"
    params.write_text("eps: 6e-1\ntrain:\n  lr: 1e-4\n")
    result = ex.run_commandline(["sci", "--loglevel=ERROR", "with", str(params), "train.weight_decay=1.0e12"]).result
    assert result == [1e-4, 1e12, 0.6]


def test_scientific_notation_through_dvc_exp_run_set_param(tmp_path: Path) -> None:
    """`dvc exp run -S train.lr=1e-4` rewrites params.yaml with DVC's own override code."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(Config().to_dict()))
    hydra.apply_overrides(params, ["train.lr=1e-4", "eps=1.0e-1"])
    cfg = Config.from_yaml(params)
    assert cfg.train.lr == 1e-4 and cfg.eps == 0.1


# ---------------------------------------------------------------- 5. one line, not a traceback
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_train_out_that_is_a_file_is_one_line(tmp_path: Path, capsys, where: str) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("keep me\n")
    out = blocker if where == "a file" else blocker / "run"
    assert main(["train", "--set", "train.epochs=1", "--out", str(out)]) == 2
    line = _one_error(capsys, "maskcl train: error:")
    detail = "is a file" if where == "a file" else f"is under '{blocker}', which is a file"
    assert line == (f"maskcl train: error: --out '{out}' {detail}; expected a folder for last.pt, "
                    "history.json and metrics.json")
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_data_summary_that_is_a_folder_or_under_a_file_is_one_line(tmp_path: Path, capsys, where: str) -> None:
    splits, _ = make_ltcc_tree(tmp_path)
    if where == "a folder":
        summary = tmp_path / "results"
        summary.mkdir()
        expected = f"cannot write summary file '{summary}': it is a folder; nothing was written there"
    else:
        (tmp_path / "results").write_text("a file\n")
        summary = tmp_path / "results" / "data.json"
        expected = f"cannot write summary file '{summary}': '{tmp_path / 'results'}' is a file, not a folder"
    assert main(["data", "--set", f"dataset.root={splits.root}", "--summary", str(summary)]) == 2
    line = _one_error(capsys, "maskcl data: error:")
    assert line.startswith(f"maskcl data: error: {expected}"), line
    assert not list(tmp_path.glob("**/.*.tmp"))


class _FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC after ``limit`` bytes, like a disk that fills up."""

    def __init__(self, fd: int, limit: int):
        self.raw, self.limit, self.written = os.fdopen(fd, "wb", buffering=0), limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.written + len(data) > self.limit:
            self.raw.write(bytes(data)[: self.limit - self.written])  # part of it lands, as on a real disk
            self.written = self.limit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.raw.write(data)

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
        super().close()


def _fill_disk(monkeypatch, limit: int = 10) -> None:
    monkeypatch.setattr(atomic, "_open_temp", lambda fd: _FullDisk(fd, limit))


def test_full_disk_on_maskcl_data_is_one_line_and_keeps_the_old_summary(tmp_path: Path, capsys, monkeypatch) -> None:
    splits, _ = make_ltcc_tree(tmp_path)
    summary = tmp_path / "out" / "data.json"
    assert main(["data", "--set", f"dataset.root={splits.root}", "--summary", str(summary)]) == 0
    before = summary.read_bytes()
    capsys.readouterr()
    _fill_disk(monkeypatch)
    assert main(["data", "--set", f"dataset.root={splits.root}", "--summary", str(summary)]) == 2
    line = _one_error(capsys, "maskcl data: error:")
    assert line == (f"maskcl data: error: cannot write summary file '{summary}': the disk is full (no space left "
                    "on device); nothing was written there (any previous file is unchanged) — free space and run again")
    assert summary.read_bytes() == before and sorted(p.name for p in summary.parent.iterdir()) == ["data.json"]


def test_full_disk_on_maskcl_evaluate_prints_the_scores_and_one_line(trained, tmp_path: Path, capsys, monkeypatch) -> None:
    params, run = trained
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"old": 1}\n')
    _fill_disk(monkeypatch)
    code = main(["evaluate", "--params", str(params), "--checkpoint", str(run / "last.pt"), "--out", str(metrics)])
    captured = capsys.readouterr()
    assert code == 2
    lines = _error_lines(captured.err, "maskcl evaluate: error:")
    assert lines == [f"maskcl evaluate: error: cannot write metrics file '{metrics}': the disk is full (no space "
                     "left on device); nothing was written there (any previous file is unchanged) — free space and run again"]
    assert "Traceback" not in captured.err
    assert json.loads(captured.out)["cc"]["mAP"] >= 0  # the scores computed before the fault are shown
    assert metrics.read_text() == '{"old": 1}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_full_disk_on_train_metrics_is_one_line_and_keeps_the_checkpoint(tree, tmp_path: Path, capsys, monkeypatch) -> None:
    splits, mask_root = tree
    params = _params(tmp_path, splits, mask_root, **{"train.epochs": 1})
    out = tmp_path / "R"
    _fill_disk(monkeypatch)
    assert main(["train", "--params", str(params), "--out", str(out)]) == 2
    line = _one_error(capsys, "maskcl train: error:")
    assert line.startswith(f"maskcl train: error: cannot write metrics file '{out / 'metrics.json'}': the disk is full")
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the trained epoch is kept
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "last.pt", "timings.json"]


def test_atomic_write_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic.write_text_atomic(tmp_path / "a.json", "{}\n")
        save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, tmp_path / "last.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o640


def _sacred(argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.train", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**ENV, "MASKCL_RUNS_DIR": str(cwd / "runs"), **(env or {})})


def test_sacred_train_with_a_bad_value_is_one_line_and_the_run_is_recorded_failed(tmp_path: Path) -> None:
    """What `dvc repro` runs: one line and exit 2, not Sacred's 24-line traceback."""
    done = _sacred(["with", "eps=abc"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert _error_lines(done.stderr, "experiments.train: error:") == [
        "experiments.train: error: sacred config: 'eps' must be a number, found 'abc'"]
    assert "Traceback" not in done.stderr
    record = json.loads((tmp_path / "runs" / "1" / "run.json").read_text())
    assert record["status"] == "FAILED"  # the observers still saw the failure


def test_sacred_train_with_a_broken_params_yaml_is_one_line(tmp_path: Path, capsys) -> None:
    from experiments import train as train_exp
    from experiments.config import run_commandline

    params = tmp_path / "params.yaml"
    params.write_text("eps: 0.6\ntrain: {lr: [1,\n  x: 2\n")
    assert run_commandline(train_exp.ex, ["experiments/train.py", "with", str(params)], tmp_path / "runs") == 2
    line = _one_error(capsys, "experiments.train: error:")
    assert line == (f"experiments.train: error: config file '{params}' is not valid YAML at line 4, column 1: "
                    "expected ',' or ']', but got '<stream end>'; expected 'key: value' lines")


def test_sacred_train_with_a_bad_mongo_timeout_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    from experiments import train as train_exp
    from experiments.config import run_commandline

    monkeypatch.setenv("MASKCL_MONGO_TIMEOUT_MS", "abc")
    assert run_commandline(train_exp.ex, ["experiments/train.py"], tmp_path / "runs") == 2
    line = _one_error(capsys, "experiments.train: error:")
    assert line == ("experiments.train: error: environment variable MASKCL_MONGO_TIMEOUT_MS is 'abc'; expected a "
                    "whole number of milliseconds > 0 (default 2000)")


# ---------------------------------------------------------------- 6. messages
def test_set_on_a_key_that_is_not_a_group_names_it(capsys) -> None:
    assert main(["train", "--set", "eps.x=1", "--out", "unused"]) == 2
    line = _one_error(capsys, "maskcl train: error:")
    assert line == ("maskcl train: error: key 'eps.x': 'eps' is not a group (it is a single value, 0.6), so it has "
                    "no key 'x'; expected 'eps=<value>' or a key of a group, e.g. 'train.lr'")
    assert not Path("unused").exists()


def test_set_under_an_unknown_group_lists_the_groups() -> None:
    with pytest.raises(ConfigError, match="unknown key 'trian.lr': no group 'trian'; expected one of: cluster, dataset"):
        Config().replace(**{"trian.lr": 1})


class Pickled:
    """A class a pickle refers to: weights_only=True must refuse it."""


@pytest.mark.parametrize("case", ["pickle", "text", "folder"])
def test_bad_checkpoint_given_to_evaluate_is_one_clear_line(trained, tmp_path: Path, capsys, case: str) -> None:
    params, _ = trained
    if case == "pickle":
        checkpoint = tmp_path / "evil.pt"
        torch.save({"model": {}, "payload": Pickled()}, checkpoint)
        expected = (f"checkpoint '{checkpoint}' is not a plain tensor checkpoint (it references the Python object "
                    f"{__name__}.Pickled) and will not be unpickled")
    elif case == "text":
        checkpoint = tmp_path / "notes.pt"
        checkpoint.write_text("epoch 3 looked fine\n" * 20)
        expected = f"checkpoint '{checkpoint}' is not a torch checkpoint file (neither a torch zip archive nor a legacy pickle)"
    else:
        checkpoint = tmp_path / "run"
        checkpoint.mkdir()
        (checkpoint / "last.pt").write_bytes(b"")
        expected = f"checkpoint '{checkpoint}' is a folder (it holds '{checkpoint / 'last.pt'}'); expected a checkpoint file"
    assert main(["evaluate", "--params", str(params), "--checkpoint", str(checkpoint)]) == 2
    line = _one_error(capsys, "maskcl evaluate: error:")
    assert line.startswith(f"maskcl evaluate: error: {expected}"), line
    assert "weights_only=False" not in line and "KeyError" not in line


# ---------------------------------------------------------------- 7. silent surprises
def test_resume_with_fewer_epochs_than_the_checkpoint_refuses_naming_both(trained, capsys) -> None:
    params, run = trained
    before = (run / "last.pt").read_bytes()
    assert main(["train", "--params", str(params), "--set", "train.epochs=1", "--out", str(run)]) == 2
    line = _one_error(capsys, "maskcl train: error:")
    assert line == (f"maskcl train: error: '{run / 'last.pt'}' already holds 2 trained epochs but train.epochs is 1; "
                    "expected train.epochs >= 2 (train.epochs=2 returns that run as it is), or train into another "
                    "--out folder")
    assert (run / "last.pt").read_bytes() == before


def test_last_pt_of_a_training_follows_the_umask(trained) -> None:
    _, run = trained
    expected = 0o666 & ~atomic.current_umask()
    assert (run / "last.pt").stat().st_mode & 0o777 == expected
    assert (run / "metrics.json").stat().st_mode & 0o777 == expected


# ---------------------------------------------------------------- 8. PRCC test files
def test_prcc_test_files_without_a_camera_letter_take_the_folders_camera(tmp_path: Path) -> None:
    from maskcl.data import build_dataset

    rgb = tmp_path / "prcc" / "rgb"

    def write(folder: Path, names: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.new("RGB", (8, 16)).save(folder / name)

    write(rgb / "train" / "001", ["A_cropped_rgb001.jpg", "C_cropped_rgb002.jpg"])
    for letter in "ABC":
        for pid in ("002", "003"):
            write(rgb / "test" / letter / pid, ["cropped_rgb001.jpg", "cropped_rgb017.jpg"])
    write(rgb / "test" / "B" / "002", ["xyz.jpg"])  # no rule applies to test names at all
    splits = build_dataset("prcc", tmp_path)
    assert {r.camid for r in splits.gallery} == {0} and len(splits.gallery) == 4
    assert [r.camid for r in splits.query] == [1] * 5 + [2] * 4
    assert not [w for w in splits.meta["warnings"] if "named for another camera" in w]
    write(rgb / "train" / "001", ["rgb003.jpg"])  # train names still need the letter
    with pytest.raises(DatasetError, match="rgb003.jpg"):
        build_dataset("prcc", tmp_path)
