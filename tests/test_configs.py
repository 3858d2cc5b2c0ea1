"""configs/<dataset>.yaml: the authors' per-dataset settings, valid for the Config tree, the Sacred
experiments and the dataset loaders (each file's dataset.root layout is built small and loaded)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from maskcl.config import Config, flatten_dict
from maskcl.data import build_dataset

sys.path.insert(0, str(Path(__file__).parent))
from test_datasets import make_ltcc, make_prcc, write_images  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# SiCL run_code.sh, one line per dataset: (allknn, iters); every other flag is a CMC.py default
RUN_CODE = {"vcclothes": (3, 200), "prcc": (5, 400), "ltcc": (10, 200), "celebreid": (10, 400), "celebreidlight": (10, 200)}


def build_tree(name: str, root: Path) -> None:
    """A tiny copy of the dataset's published layout at ``root`` (the config's dataset.root)."""
    if name in ("ltcc", "prcc"):
        made = (make_ltcc if name == "ltcc" else make_prcc)(root.parent)  # <parent>/LTCC_ReID, <parent>/prcc
        if made != root:
            made.rename(root)
    elif name == "vcclothes":
        write_images(root / "train", ["0002-01-01-0001.jpg", "0001-02-03-0002.jpg"])
        write_images(root / "query", ["0300-03-01-0001.jpg"])
        write_images(root / "gallery", ["0300-04-02-0003.jpg", "0300-02-01-0004.jpg"])
    elif name in ("celebreid", "celebreidlight"):
        write_images(root / "train", ["3_1_0.jpg", "1_2_0.jpg", "1_7_1.jpg"])
        write_images(root / "query", ["1_1_0.jpg"])
        write_images(root / "gallery", ["1_2_0.jpg", "1_3_1.jpg"])
    else:
        raise AssertionError(f"no tiny tree for {name}: add one here")


def test_one_config_per_authors_dataset() -> None:
    assert sorted(p.stem for p in CONFIGS) == sorted(RUN_CODE)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_holds_the_authors_settings(path: Path) -> None:
    cfg = Config.from_yaml(path)  # unknown keys, wrong types and bad ranges fail here
    assert cfg.dataset.name == path.stem
    assert set(flatten_dict(yaml.safe_load(path.read_text()))) <= set(flatten_dict(Config().to_dict()))
    allknn, iters = RUN_CODE[path.stem]
    assert (cfg.train.allknn, cfg.train.iters) == (allknn, iters)
    assert (cfg.model.arch, cfg.model.pretrained, cfg.train.height, cfg.train.width) == ("resnet50", "imagenet", 256, 128)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.num_instances, cfg.train.step_size) == (60, 64, 4, 20)
    assert (cfg.eps, cfg.eps_gap, cfg.k1, cfg.k2, cfg.min_samples, cfg.seed) == (0.6, 0.02, 30, 6, 4, 111)
    assert cfg.cluster.refine  # --cr on every run_code.sh line
    assert cfg.dataset.root.startswith("data/") and cfg.dataset.mask_root == f"generated/masks/{path.stem}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_root_is_the_loaders_layout(path: Path, tmp_path: Path) -> None:
    cfg = Config.from_yaml(path)
    root = tmp_path / cfg.dataset.root
    root.parent.mkdir(parents=True, exist_ok=True)
    build_tree(cfg.dataset.name, root)
    splits = build_dataset(cfg.dataset.name, root)
    assert splits.train and splits.query and splits.gallery and splits.protocols


@pytest.mark.parametrize("path", CONFIGS[:1], ids=lambda p: p.stem)
def test_config_feeds_the_sacred_experiment_and_the_cli(path: Path) -> None:
    from experiments import train

    from maskcl.cli import build_parser, config_from_args

    run = train.ex._create_run(named_configs=[str(path)], options={"--unobserved": True})
    assert run.config["dataset"]["name"] == path.stem and run.config["train"]["allknn"] == RUN_CODE[path.stem][0]
    args = build_parser().parse_args(["train", "--params", str(path), "--out", "x"])
    assert config_from_args(args).dataset.name == path.stem
