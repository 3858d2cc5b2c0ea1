"""Reliability and security: bad input, interruption, lost services.

Each test builds the tiny LTCC-named tree of ``tests/engine_fixtures.py`` (6 ids, 32×16 PNGs) and
checks one failure mode end to end: a corrupt image, a wrong-size mask, an epoch without clusters,
a full disk while checkpointing, ``kill -9`` mid-epoch then resume, determinism, and two static
scans of the source (``torch.load`` only with ``weights_only=True``; no eval/exec/unpickling).
"""

from __future__ import annotations

import ast
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

from maskcl.data.dataset import TrainPairs
from maskcl.data.transforms import eval_transform
from maskcl.engine import checkpoint, trainer
from maskcl.engine.checkpoint import load_checkpoint, save_checkpoint
from maskcl.engine.extract import extract_features
from maskcl.errors import CheckpointError, ClusteringError, DatasetError, MaskError

REPO = Path(__file__).resolve().parents[1]


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("_time_s")} for h in history]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on the 2 shared cores, 2 OpenMP threads make a tiny resnet18 step ~40×
    slower whenever another process holds a core (measured 2.8 s vs 0.07 s per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    """Read-only shared tree; tests that corrupt files build their own."""
    return make_ltcc_tree(tmp_path_factory.mktemp("tiny"))


# ---------------------------------------------------------------- 1. corrupt images
@pytest.mark.parametrize("corrupt", ["truncated", "text"])
def test_unreadable_image_in_extraction_is_one_line_dataset_error(tmp_path: Path, corrupt: str) -> None:
    splits, _ = make_tiny_tree(tmp_path)
    bad = splits.gallery[1].path
    if corrupt == "truncated":
        truncate_half(bad)
    else:
        bad.write_text("this is not a PNG\n")
    paths = [r.path for r in splits.query + splits.gallery]
    with pytest.raises(DatasetError) as info:
        extract_features(lambda x: x.flatten(1), paths, eval_transform(32, 16), torch.device("cpu"), batch_size=4)
    message = str(info.value)
    assert f"image '{bad}' cannot be read" in message and "expected a readable image" in message
    assert "\n" not in message


def test_unreadable_image_through_dataloader_workers_keeps_one_line(tmp_path: Path) -> None:
    """A worker re-raises the error as ``DatasetError(<worker traceback>)``; the message stays the original line."""
    splits, _ = make_tiny_tree(tmp_path)
    bad = splits.query[0].path
    truncate_half(bad)
    paths = [r.path for r in splits.query]
    with pytest.raises(DatasetError) as info:
        extract_features(lambda x: x.flatten(1), paths, eval_transform(32, 16), torch.device("cpu"),
                         batch_size=2, workers=2)
    message = str(info.value)
    assert message.startswith(f"image '{bad}' cannot be read") and "expected a readable image" in message
    assert "\n" not in message and "Traceback" not in message and "DataLoader worker process" in message


def test_truncated_mask_read_for_training_is_a_mask_error(tmp_path: Path) -> None:
    splits, mask_root = make_tiny_tree(tmp_path)
    records = sorted(splits.train, key=lambda r: str(r.path))
    masks = [mask_root / "train" / r.path.name for r in records]
    truncate_half(masks[0])
    data = TrainPairs([r.path for r in records], [0] * len(records), eval_transform(32, 16), masks,
                      eval_transform(32, 16))
    with pytest.raises(MaskError, match=rf"mask '{masks[0]}' cannot be read .*expected a readable PNG mask — "
                       r"regenerate the masks with `maskcl masks --force`"):
        data[0]


def test_cli_train_prints_a_corrupt_train_image_on_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """`maskcl train` with DataLoader workers: exit code 2 and one line naming the file."""
    from maskcl.cli import main

    splits, mask_root = make_tiny_tree(tmp_path)
    patch_collaborators(monkeypatch, splits)
    bad = sorted(splits.train, key=lambda r: str(r.path))[5].path
    truncate_half(bad)  # header intact (passes the mask-size check), pixels cut: fails when decoded
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_config(splits.root, mask_root).to_dict()))
    code = main(["train", "--params", str(params), "--set", "train.workers=2", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("maskcl train: error:")]
    assert len(lines) == 1, err
    assert f"image '{bad}' cannot be read" in lines[0] and "expected a readable image" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------- 2. wrong-size mask
def test_wrong_size_mask_fails_before_training_naming_both_sizes(tmp_path: Path, monkeypatch) -> None:
    """Checked up front (mask and image headers only), so it fails before any model is built."""
    splits, mask_root = make_tiny_tree(tmp_path)
    patch_collaborators(monkeypatch, splits)
    record = sorted(splits.train, key=lambda r: str(r.path))[3]
    mask = mask_root / "train" / record.path.name
    Image.new("L", (8, 16)).save(mask)
    built = []
    monkeypatch.setattr(trainer, "build_network", lambda *a, **k: built.append(1))
    with pytest.raises(MaskError) as info:
        trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "run")
    message = str(info.value)
    assert f"'{mask}' is 8x16 but image '{record.path}' is 16x32" in message
    assert message.startswith("1 mask(s) under") and "\n" not in message
    assert not built and not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------- 3. no cluster
def test_epoch_without_any_cluster_names_epoch_and_eps_and_keeps_last_checkpoint(tree, tmp_path, monkeypatch) -> None:
    splits, mask_root = tree
    patch_collaborators(monkeypatch, splits)
    real = trainer.make_pseudo_labels
    calls = []

    def tiny_eps_from_epoch_2(feats, cfg):
        calls.append(1)
        # the real Jaccard + DBSCAN in epoch 2 with a tiny eps and more min_samples than samples, so
        # every sample is noise (eps alone is not enough: near-duplicates have Jaccard distance 0)
        tiny = {"eps": 0.01, "eps_gap": 0.0, "min_samples": len(feats) + 1}
        return real(feats, cfg.replace(**tiny) if len(calls) >= 2 else cfg)

    monkeypatch.setattr(trainer, "make_pseudo_labels", tiny_eps_from_epoch_2)
    out = tmp_path / "run"
    cfg = tiny_config(splits.root, mask_root, method="rgb", **{"train.eval_step": 2})  # the cheapest epoch 1
    expected = r"^epoch 2: DBSCAN \(eps=0\.01, min_samples=17\) found no cluster among 16 samples"
    with pytest.raises(ClusteringError, match=expected):
        trainer.fit(cfg, out)
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and [h["epoch"] for h in state["history"]] == [1]
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]


# ---------------------------------------------------------------- 4. disk full
def _half_then_enospc(real_save):
    def save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: buffer.tell() // 2])  # a partial file on disk, then the error
        handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


class _FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC after ``limit`` bytes (torch then raises RuntimeError
    with the OSError as its context, as with a real full disk)."""

    def __init__(self, raw, limit: int):
        self.raw, self.limit, self.written = raw, limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.raw.write(data)

    def fileno(self) -> int:
        return self.raw.fileno()

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()
        super().close()


@pytest.mark.parametrize("how", ["torch.save raises OSError", "file write raises ENOSPC"])
def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path: Path, monkeypatch, how: str) -> None:
    path = tmp_path / "last.pt"
    good = {"model": {"w": torch.arange(4.0)}, "epoch": 1}
    save_checkpoint(good, path)
    before = path.read_bytes()
    if how == "torch.save raises OSError":
        monkeypatch.setattr(checkpoint.torch, "save", _half_then_enospc(torch.save))
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), 1500))
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"model": {"w": torch.zeros(4096)}, "epoch": 2}, path)
    message = str(info.value)
    assert f"cannot write checkpoint '{path}': the disk is full" in message and "\n" not in message
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no partial temp file


def test_disk_full_during_training_stops_with_checkpoint_error(tree, tmp_path: Path, monkeypatch) -> None:
    splits, mask_root = tree
    patch_collaborators(monkeypatch, splits)
    real_save, calls = torch.save, []

    def fails_second_time(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            return _half_then_enospc(real_save)(obj, handle)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", fails_second_time)
    out = tmp_path / "run"
    cfg = tiny_config(splits.root, mask_root, method="rgb", **{"train.eval_step": 2})  # the cheapest 2 epochs
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint '{out / 'last.pt'}': the disk is full"):
        trainer.fit(cfg, out)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "last.pt", "timings.json"]


# ---------------------------------------------------------------- 5. kill -9, resume
# Runs `maskcl train` unchanged except that, in epoch 2 after its first optimizer step, it writes a
# marker and sleeps: the SIGKILL then lands mid-epoch every time (no timing race).
STALL_IN_EPOCH_2 = """
import sys, time
from pathlib import Path
from maskcl.cli import main
from maskcl.engine import trainer
marker, argv = Path(sys.argv[1]), sys.argv[2:]
state = {"epoch": -1, "calls": 0}
real_epoch, real_losses = trainer.Engine._train_epoch, trainer.maskcl_losses
def train_epoch(self, epoch, labels, nbrs):
    state["epoch"], state["calls"] = epoch, 0
    return real_epoch(self, epoch, labels, nbrs)
def losses(*args, **kwargs):
    state["calls"] += 1
    if state["epoch"] == 1 and state["calls"] == 2:
        marker.write_text("epoch 2, iteration 2")
        time.sleep(300)
    return real_losses(*args, **kwargs)
trainer.Engine._train_epoch, trainer.maskcl_losses = train_epoch, losses
sys.exit(main(argv))
"""


def test_kill_9_mid_epoch_then_rerun_resumes_to_the_uninterrupted_result(tree, tmp_path: Path) -> None:
    from maskcl.cli import main

    splits, mask_root = tree
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_config(splits.root, mask_root, **{"train.epochs": 3}).to_dict()))
    out, marker = tmp_path / "killed", tmp_path / "in-epoch-2"
    args = ["train", "--params", str(params), "--set", "train.workers=0", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "stall.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", STALL_IN_EPOCH_2, str(marker), *args],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "stall.log").read_text()
            assert time.monotonic() < deadline, "epoch 2 never started"
            time.sleep(0.05)
        history = json.loads((out / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1]  # epoch 1 checkpointed, now inside epoch 2
        proc.kill()  # SIGKILL
        assert proc.wait(timeout=30) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / "metrics.json").exists()
    assert not list(out.glob("*.tmp"))

    resumed = subprocess.run([sys.executable, "-m", "maskcl.cli", *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "after epoch 1" in resumed.stderr

    # the uninterrupted reference, in this process (same CPU torch, same seed)
    # one torch thread here (autouse fixture) as in the subprocesses (OMP_NUM_THREADS=1)
    whole = tmp_path / "whole"
    assert main(["train", "--params", str(params), "--set", "train.workers=0", "--out", str(whole)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())
    assert _without_timings(json.loads((out / "history.json").read_text())) == _without_timings(
        json.loads((whole / "history.json").read_text()))


# ---------------------------------------------------------------- 6. determinism
def test_same_seed_and_config_on_cpu_give_identical_runs(tree, tmp_path: Path, monkeypatch) -> None:
    splits, mask_root = tree
    patch_collaborators(monkeypatch, splits)
    a = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "a")
    b = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "b")
    assert a.metrics == b.metrics and a.best_on_test == b.best_on_test
    assert _without_timings(a.history) == _without_timings(b.history)
    ma, mb = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


# ---------------------------------------------------------------- 7. security scans
SOURCES = sorted(p for folder in ("maskcl", "experiments") for p in (REPO / folder).rglob("*.py"))

# (file relative to the repo, dotted call) -> why it is safe. Empty: nothing needed one.
ALLOWED: dict[tuple[str, str], str] = {}

CODE_FROM_TEXT = {"eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"}
UNPICKLING = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
    "cPickle.loads", "dill.load", "dill.loads", "marshal.load", "marshal.loads", "shelve.open",
    "joblib.load", "pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
    "torch.package.PackageImporter",
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin (``import numpy as np`` -> np: numpy; ``from torch import load``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(func: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(aliases.get(func.id, func.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def scan(source: str, filename: str = "<source>") -> tuple[list[str], list[str]]:
    """(torch.load calls without ``weights_only=True``, unsafe code/unpickling calls) as ``file:line name``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    unsafe_loads, unsafe_calls = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        where = f"{filename}:{node.lineno} {name}"
        if name == "torch.load":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe_loads.append(where)
        elif name in CODE_FROM_TEXT or name in UNPICKLING:
            unsafe_calls.append(where)
        elif name == "yaml.load":
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            loader_name = _dotted(loader, aliases) if loader is not None else None
            if loader_name is None or loader_name.rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                unsafe_calls.append(where)
        elif name in ("numpy.load", "np.load"):
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                unsafe_calls.append(where)
    return unsafe_loads, unsafe_calls


def test_scanner_flags_what_it_looks_for() -> None:
    """The scans below would pass vacuously if the scanner missed these shapes."""
    bad = (
        "import torch, pickle as pk, yaml\nfrom torch import load as tl\nimport numpy as np\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\ntl('a')\n"
        "eval(text)\nexec(text)\npk.loads(b)\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)\n"
        "np.load(p, allow_pickle=True)\n"
    )
    loads, calls = scan(bad)
    assert len(loads) == 3 and len(calls) == 6, (loads, calls)
    good = (
        "import torch, yaml\nimport numpy as np\ntorch.load('a', map_location='cpu', weights_only=True)\n"
        "model.eval()\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\nnp.load(p, allow_pickle=False)\n"
        "re.compile('x')\n"
    )
    assert scan(good) == ([], [])


def test_every_torch_load_uses_weights_only_true() -> None:
    assert len(SOURCES) > 20  # the scan saw the library and the experiments
    found = [hit for path in SOURCES for hit in scan(path.read_text(), str(path.relative_to(REPO)))[0]]
    assert found == [], f"torch.load without weights_only=True: {found}"


def test_no_eval_exec_or_unpickling_in_library_and_experiments() -> None:
    found = []
    for path in SOURCES:
        rel = str(path.relative_to(REPO))
        for hit in scan(path.read_text(), rel)[1]:
            if (rel, hit.rsplit(" ", 1)[-1]) not in ALLOWED:
                found.append(hit)
    assert found == [], f"code or pickles loaded from data: {found}"
