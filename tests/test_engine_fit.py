"""End-to-end engine runs on a tiny LTCC-named tree: train, metrics, resume, guards, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

try:
    from tests.engine_fixtures import tiny_config
except ImportError:  # rootdir-less import mode
    from engine_fixtures import tiny_config

from maskcl.engine import trainer
from maskcl.engine.checkpoint import load_checkpoint
from maskcl.engine.logger import MemoryLogger
from maskcl.errors import CheckpointError, MaskError, TrainingError


def test_fit_trains_logs_and_reports_the_last_epoch(tiny_engine, tmp_path: Path) -> None:
    splits, mask_root = tiny_engine
    logger = MemoryLogger()
    result = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "run", logger)
    assert result.epochs == 2 and len(result.history) == 2
    assert result.metrics is result.history[-1]["test"]
    cc = result.metrics["cc"]
    assert 0.0 <= cc["mAP"] <= 100.0 and 0.0 <= cc["rank1"] <= 100.0
    assert result.best_on_test["epoch"] in (1, 2) and "test set" in result.best_on_test["note"]
    assert all(len(h["iter_loss"]) == 3 and all(map(math.isfinite, h["iter_loss"])) for h in result.history)
    for name in ("train.loss", "train.loss_rgb", "train.loss_mask", "train.loss_fusion",
                 "cluster.n_clusters", "cluster.n_unclustered", "cluster.time_s", "lr", "test.cc.mAP", "test.cc.rank1"):
        assert [step for step, _ in logger.scalars[name]] == [1, 2], name
    assert result.history[1]["knn_k"] == 1 or result.history[1]["n_clusters"] <= 1  # floor(2·1/2) = 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2 and set(state["memories"]) == {"rgb", "mask", "fusion"}
    # a finished run is returned as is, without training again
    again = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "run")
    assert again.metrics == result.metrics


def test_resumed_run_equals_uninterrupted_run(tiny_engine, tmp_path: Path) -> None:
    splits, mask_root = tiny_engine
    whole = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "whole")
    trainer.fit(tiny_config(splits.root, mask_root, **{"train.epochs": 1}), tmp_path / "split")
    resumed = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "split")
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for name, memory in a["memories"].items():
        assert torch.equal(memory["feats"], b["memories"][name]["feats"]), name
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    assert whole.metrics == resumed.metrics


def test_rgb_baseline_trains_the_rgb_branch_only(tiny_engine, tmp_path: Path) -> None:
    splits, mask_root = tiny_engine
    cfg = tiny_config(splits.root, tmp_path / "no-masks-needed", method="rgb", **{"train.epochs": 1})
    result = trainer.fit(cfg, tmp_path / "rgb")
    assert "loss_mask" not in result.history[0] and "cc" in result.metrics
    assert set(load_checkpoint(tmp_path / "rgb" / "last.pt")["memories"]) == {"rgb"}


def test_oracle_labels_replace_the_pseudo_labels(tiny_engine, tmp_path: Path, monkeypatch) -> None:
    """cluster.oracle trains on the true identities / outfits and never runs the clustering."""
    splits, mask_root = tiny_engine
    monkeypatch.setattr(trainer, "make_pseudo_labels", lambda *a, **k: pytest.fail("clustered under an oracle"))
    ids = len({r.pid for r in splits.train})
    outfits = len({r.clothes_id for r in splits.train})
    for kind, expected in (("identity", ids), ("clothes", outfits)):
        cfg = tiny_config(splits.root, mask_root, **{"train.epochs": 1, "cluster.oracle": kind})
        result = trainer.fit(cfg, tmp_path / kind)
        assert (result.history[0]["n_clusters"], result.history[0]["n_unclustered"]) == (expected, 0)
        labels = load_checkpoint(tmp_path / kind / "last.pt")["memories"]["rgb"]["labels"]
        records = sorted(splits.train, key=lambda r: str(r.path))
        key = [r.pid if kind == "identity" else r.clothes_id for r in records]
        assert all((labels[i] == labels[j]) == (key[i] == key[j]) for i in range(len(key)) for j in range(len(key)))


def test_missing_masks_fail_before_training(tiny_engine, tmp_path: Path) -> None:
    splits, _ = tiny_engine
    with pytest.raises(MaskError, match=r"16 of 16 mask\(s\) missing"):
        trainer.fit(tiny_config(splits.root, tmp_path / "empty"), tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_non_finite_loss_names_epoch_iteration_and_last_checkpoint(tiny_engine, tmp_path: Path, monkeypatch) -> None:
    splits, mask_root = tiny_engine
    real = trainer.focal_prototype_loss
    calls = {"n": 0}

    def poisoned(probs, targets, gamma=4.0):
        calls["n"] += 1
        loss = real(probs, targets, gamma)
        return loss * float("nan") if calls["n"] > 3 * 3 + 3 else loss  # 3 memories × 3 iters, then 2nd iter

    monkeypatch.setattr(trainer, "focal_prototype_loss", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 2, iteration 2 .*last good checkpoint: .*last\.pt' \(after epoch 1\)"):
        trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "run")


def test_resume_with_another_config_is_refused(tiny_engine, tmp_path: Path) -> None:
    splits, mask_root = tiny_engine
    trainer.fit(tiny_config(splits.root, mask_root, **{"train.epochs": 1}), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"another configuration \(seed: 1 → 2\)"):
        trainer.fit(tiny_config(splits.root, mask_root, seed=2), tmp_path / "run")


def test_resume_from_a_checkpoint_older_than_a_config_key(tiny_engine, tmp_path: Path) -> None:
    """A key added after a checkpoint was written reads as its default there: resume proceeds
    when the run keeps that default (or changes a speed-only key) and is refused otherwise."""
    from maskcl.engine.checkpoint import load_checkpoint, save_checkpoint

    splits, mask_root = tiny_engine
    run = tmp_path / "run"
    trainer.fit(tiny_config(splits.root, mask_root, **{"train.epochs": 1}), run)
    state = load_checkpoint(run / trainer.CHECKPOINT)
    for group, key in (("cluster", "nprobe"), ("cluster", "nlist"), ("train", "parallel_branches")):
        del state["config"][group][key]  # as written by maskcl before these keys existed
    save_checkpoint(state, run / trainer.CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"another configuration \(cluster.nprobe: 8 → 16\)"):
        trainer.fit(tiny_config(splits.root, mask_root, **{"cluster.nprobe": 16}), run)
    resumed = trainer.fit(tiny_config(splits.root, mask_root, **{"train.parallel_branches": True}), run)
    assert resumed.epochs == 2


def test_cli_train_then_evaluate(tiny_engine, tmp_path: Path) -> None:
    from maskcl.cli import main

    splits, mask_root = tiny_engine
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_config(splits.root, mask_root, **{"train.epochs": 1}).to_dict()))
    assert main(["train", "--params", str(params), "--out", str(tmp_path / "run")]) == 0
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--params", str(params), "--checkpoint", str(tmp_path / "run" / "last.pt"),
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == trained["metrics"]


def _net_and_memories(labels: torch.Tensor):
    """A seeded two-branch ResNet-18, random images and masks (one per label), and the three
    memories initialised from the eval-mode features and labelled with ``labels``."""
    from maskcl.memory import InstanceMemory
    from maskcl.models import TwoBranchNet

    torch.manual_seed(0)
    net = TwoBranchNet("resnet18", pretrained="none", method="maskcl")
    images, masks = torch.randn(len(labels), 3, 32, 16), torch.randn(len(labels), 3, 32, 16)
    net.eval()
    with torch.no_grad():
        f_rgb, f_mask = net(images), net.mask_features(masks)
    memories = {"rgb": InstanceMemory(f_rgb), "mask": InstanceMemory(f_mask), "fusion": InstanceMemory(f_rgb)}
    for memory in memories.values():
        memory.set_labels(labels)
    return net, images, masks, memories


def test_engine_loss_falls_when_fitting_a_fixed_batch() -> None:
    """The assembled MaskCL loss (all three memories, cross-view terms) decreases under Adam."""
    from maskcl.config import TrainConfig

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    indexes = torch.arange(8)
    net, images, masks, memories = _net_and_memories(labels)
    nbrs = (torch.tensor([[1], [0], [3], [2]]), torch.tensor([[0.5], [0.5], [0.5], [0.5]]))
    cfg = TrainConfig()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net.train()
    totals = []
    for _ in range(12):
        out = net.forward_train(images, masks)
        losses = trainer.maskcl_losses(out, memories, labels, nbrs, cfg)
        assert set(losses) == {"loss_rgb", "loss_mask", "loss_fusion"}
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        memories["rgb"].update(out.f_rgb, indexes)
        memories["mask"].update(out.f_mask, indexes)
        memories["fusion"].update(out.h, indexes)
        totals.append(total.item())
    assert sum(totals[-3:]) / 3 < sum(totals[:3]) / 3


def test_cross_view_parts_are_the_two_cosines_inside_loss_mask() -> None:
    """The recorded parts are −cos(g, f_mask) and −cos(g, the sample's mask prototype), computed
    here by hand, and loss_mask minus them is exactly the mask memory's focal + neighbour loss."""
    from maskcl.config import TrainConfig

    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    net, images, masks, memories = _net_and_memories(labels)
    net.train()
    out = net.forward_train(images, masks)
    parts: dict[str, torch.Tensor] = {}
    with_parts = trainer.maskcl_losses(out, memories, labels, None, TrainConfig(), parts=parts)
    alone = trainer.maskcl_losses(out, memories, labels, None, TrainConfig(cross_view=False))
    g = torch.nn.functional.normalize(out.g_rgb.detach(), dim=1)
    protos = torch.stack([memories["mask"].feats[labels == c].mean(0) for c in range(4)])
    by_hand_instance = -(g * torch.nn.functional.normalize(out.f_mask.detach(), dim=1)).sum(1).mean()
    by_hand_prototype = -(g * torch.nn.functional.normalize(protos[labels], dim=1)).sum(1).mean()
    assert set(parts) == {"xview_instance", "xview_prototype"}
    assert parts["xview_instance"].item() == pytest.approx(by_hand_instance.item(), abs=1e-5)
    assert parts["xview_prototype"].item() == pytest.approx(by_hand_prototype.item(), abs=1e-5)
    assert not parts["xview_instance"].requires_grad
    recombined = alone["loss_mask"] + parts["xview_instance"] + parts["xview_prototype"]
    assert with_parts["loss_mask"].item() == pytest.approx(recombined.item(), abs=1e-5)
    assert trainer.maskcl_losses(out, memories, labels, None, TrainConfig()).keys() == with_parts.keys()


def test_two_runs_with_one_seed_write_byte_identical_run_folders(tiny_engine, tmp_path: Path) -> None:
    """DVC hashes the run folder: last.pt and history.json must not carry wall-clock timings
    (they go to the dvcignored timings.json), or every re-run changes dvc.lock."""
    import hashlib

    splits, mask_root = tiny_engine
    digests = []
    for name in ("a", "b"):
        trainer.fit(tiny_config(splits.root, mask_root), tmp_path / name)
        folder = tmp_path / name
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "last.pt", folder / "history.json")})
        timings = json.loads((folder / trainer.TIMINGS).read_text())
        assert [t["epoch"] for t in timings] == [1, 2] and all(t["epoch_time_s"] > 0 for t in timings)
        assert not any(k in entry for entry in json.loads((folder / "history.json").read_text()) for k in trainer.TIMING_KEYS)
    assert digests[0] == digests[1]
    assert "timings.json" in (Path(__file__).resolve().parents[1] / ".dvcignore").read_text().split()
