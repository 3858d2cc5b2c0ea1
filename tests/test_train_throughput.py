"""The faster CPU run (#16): channels_last weights and inputs, decoded images kept in memory,
and the checkpoint policy (one write per epoch, or every N epochs), none of which may change
what a run learns or break resume."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

try:
    from tests.engine_fixtures import tiny_config
except ImportError:  # rootdir-less import mode
    from engine_fixtures import tiny_config

from maskcl.data.dataset import TrainPairs, load_rgb
from maskcl.data.image_cache import DecodedImages
from maskcl.data.transforms import train_transform
from maskcl.engine import checkpoint as checkpoint_module
from maskcl.engine import trainer
from maskcl.engine.checkpoint import load_checkpoint
from maskcl.errors import DatasetError, MaskError
from maskcl.models.network import TwoBranchNet


# ---------------------------------------------------------------- channels_last
def test_channels_last_network_computes_the_nchw_network_in_another_layout(torch_threads) -> None:
    torch_threads(1)  # the bound below is one thread's (see the measured figures)
    torch.manual_seed(0)
    nchw = TwoBranchNet("mobilenet_v2", pretrained="none", method="maskcl")
    fast = TwoBranchNet("mobilenet_v2", pretrained="none", method="maskcl", channels_last=True)
    fast.load_state_dict(nchw.state_dict())
    conv = fast.rgb.trunk[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images, masks, weights = torch.randn(8, 3, 48, 24), torch.randn(8, 3, 48, 24), torch.randn(8, 1280)
    # gradients against float64 (through the initial BN statistics: train-mode BN over 8 samples on
    # random weights amplifies rounding ~1e4× in either layout). Measured on the 2-vCPU EPYC:
    # channels_last ~2e-6 from float64 with one thread, up to 1.5e-3 with two (other reduction
    # orders, deterministic per thread count); the NCHW float32 kernels up to ~4e-3. A layout
    # bug would be off by O(1)
    exact = copy.deepcopy(nchw).double()
    for net, cast in ((fast, torch.float32), (exact, torch.float64)):
        out = net.eval().forward_train(images.to(cast), masks.to(cast))
        ((out.f_rgb * weights.to(cast)).sum() + (out.f_mask * weights.to(cast)).sum()).backward()
    for (name, p), q in zip(exact.named_parameters(), fast.parameters()):
        if p.grad is not None and p.grad.norm() > 1e-3:
            assert ((q.grad.double() - p.grad).norm() / p.grad.norm()).item() < 1e-4, name
    a, b = nchw.train().forward_train(images, masks), fast.train().forward_train(images, masks)
    for name in ("f_rgb", "g_rgb", "f_mask", "h"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5)
    # a channels_last state dict loads into an NCHW network (evaluate_checkpoint, the ladder)
    back = TwoBranchNet("mobilenet_v2", pretrained="none", method="maskcl")
    back.load_state_dict(fast.state_dict())
    torch.testing.assert_close(back.eval()(images), fast.eval()(images), rtol=1e-4, atol=1e-5)


def test_channels_last_run_is_deterministic_and_resumes_exactly(tiny_engine, tmp_path: Path) -> None:
    splits, mask_root = tiny_engine
    fast = {"model.channels_last": True}
    whole = trainer.fit(tiny_config(splits.root, mask_root, **fast), tmp_path / "whole")
    again = trainer.fit(tiny_config(splits.root, mask_root, **fast), tmp_path / "again")
    trainer.fit(tiny_config(splits.root, mask_root, **fast, **{"train.epochs": 1}), tmp_path / "split")
    resumed = trainer.fit(tiny_config(splits.root, mask_root, **fast), tmp_path / "split")
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in again.history] == [h["loss"] for h in resumed.history]
    assert whole.metrics == again.metrics == resumed.metrics


# ---------------------------------------------------------------- decoded-image cache
def _png(path: Path, value: int, size=(16, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def test_cache_holds_the_decoded_pixels_up_to_its_budget(tmp_path: Path) -> None:
    paths = [_png(tmp_path / f"{i}.png", 10 * i) for i in range(4)]  # 16×32×3 = 1536 bytes each
    cache = DecodedImages(budget_mb=0)
    assert cache.warm(paths) == 0 and np.array_equal(np.asarray(cache.load(paths[1])), np.asarray(load_rgb(paths[1])))
    cache = DecodedImages(budget_mb=1)
    cache.budget = 3 * 1536 + 100  # room for three images, not four
    assert cache.warm(paths) == 3 and cache.used == 3 * 1536
    assert cache.load(paths[0]) is cache.load(paths[0])  # decoded once, then handed out
    assert cache.load(paths[3]) is not cache.load(paths[3])  # past the budget: decoded every time
    for path in paths:
        assert np.array_equal(np.asarray(cache.load(path)), np.asarray(load_rgb(path)))
    with pytest.raises(ValueError, match="budget_mb must be >= 0"):
        DecodedImages(-1)


def test_cache_reports_an_unreadable_file_as_load_rgb_does(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cache = DecodedImages(budget_mb=1)
    with pytest.raises(MaskError, match=r"mask '.*bad.png' cannot be read.*regenerate the masks"):
        cache.load(bad, "mask", MaskError)
    with pytest.raises(DatasetError, match=r"image '.*bad.png' cannot be read"):
        cache.warm([bad])
    assert len(cache) == 0


def test_cached_training_draws_equal_uncached_ones(tiny_tree) -> None:
    """Same seeds, same augmentation, same tensors: the cache changes when a file is decoded, never what."""
    splits, mask_root = tiny_tree
    images = [r.path for r in splits.train]
    masks = [mask_root / p.relative_to(splits.root) for p in images]
    labels = list(range(len(images)))
    kwargs = dict(mask_transform=train_transform(32, 16, grey=True))
    plain = TrainPairs(images, labels, train_transform(32, 16), masks, **kwargs)
    cache = DecodedImages(budget_mb=16)
    cache.warm(images)
    cache.warm(masks, "mask", MaskError)
    cached = TrainPairs(images, labels, train_transform(32, 16), masks, load=cache.load, **kwargs)
    for key in [(0, 11), (3, 12), (0, 11), (5, 99)]:
        a, b = plain[key], cached[key]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]


def test_a_cached_run_equals_an_uncached_run(tiny_engine, tmp_path: Path) -> None:
    splits, mask_root = tiny_engine
    plain = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "plain")
    cached = trainer.fit(tiny_config(splits.root, mask_root, **{"train.image_cache_mb": 64}), tmp_path / "cached")
    assert [h["iter_loss"] for h in plain.history] == [h["iter_loss"] for h in cached.history]
    assert plain.metrics == cached.metrics


# ---------------------------------------------------------------- checkpoint policy
def _count_saves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    epochs: list[int] = []
    real = checkpoint_module.save_checkpoint

    def counting(state, path):
        epochs.append(int(state["epoch"]))
        real(state, path)

    monkeypatch.setattr(trainer, "save_checkpoint", counting)
    return epochs


def test_one_checkpoint_write_per_epoch_holds_the_scores(tiny_engine, tmp_path: Path, monkeypatch) -> None:
    splits, mask_root = tiny_engine
    saves = _count_saves(monkeypatch)
    trainer.fit(tiny_config(splits.root, mask_root, **{"train.epochs": 3}), tmp_path / "run")
    assert saves == [1, 2, 3]  # eval_step 1: each epoch written once, after its evaluation
    assert all("test" in h for h in load_checkpoint(tmp_path / "run" / "last.pt")["history"])


def test_checkpoint_every_two_writes_even_epochs_and_the_last(tiny_engine, tmp_path: Path, monkeypatch) -> None:
    splits, mask_root = tiny_engine
    saves = _count_saves(monkeypatch)
    trainer.fit(tiny_config(splits.root, mask_root, **{"train.epochs": 3, "train.checkpoint_every": 2}), tmp_path / "run")
    assert saves == [2, 3]


def test_resume_from_an_older_checkpoint_replays_to_the_uninterrupted_result(tiny_engine, tmp_path: Path) -> None:
    """checkpoint_every 2, stopped after epoch 3: last.pt holds epoch 2, history.json epoch 3; the
    re-run replays epoch 3 and ends exactly where an uninterrupted run does."""
    splits, mask_root = tiny_engine
    every2 = {"train.checkpoint_every": 2}
    whole = trainer.fit(tiny_config(splits.root, mask_root, **{"train.epochs": 4}), tmp_path / "whole")

    class Stop(Exception):
        pass

    engine_run = trainer.Engine._train_epoch
    calls = []

    def stop_at_epoch_4(self, epoch, labels, nbrs):
        calls.append(epoch)
        if epoch == 3:
            raise Stop
        return engine_run(self, epoch, labels, nbrs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.Engine, "_train_epoch", stop_at_epoch_4)
        with pytest.raises(Stop):
            trainer.fit(tiny_config(splits.root, mask_root, **every2, **{"train.epochs": 4}), tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 2
    resumed = trainer.fit(tiny_config(splits.root, mask_root, **every2, **{"train.epochs": 4}), tmp_path / "split")
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    assert whole.metrics == resumed.metrics


# ---------------------------------------------------------------- parallel branches
@pytest.fixture()
def torch_threads():
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _step_grads(net: TwoBranchNet, images, masks, parallel: bool):
    from maskcl.config import TrainConfig
    from maskcl.engine.branches import ParallelBranches
    from maskcl.memory import InstanceMemory

    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 8, (64,), generator=gen)
    memories = {}
    for name in ("rgb", "mask", "fusion"):
        memories[name] = InstanceMemory(torch.nn.functional.normalize(torch.randn(64, net.dim, generator=gen), dim=1))
        memories[name].set_labels(labels)
    targets = labels[: images.shape[0]]
    if parallel:
        branches = ParallelBranches(net, 2)
        with branches.session():
            step = branches.forward(images, masks)
            total = sum(trainer.maskcl_losses(step.outputs, memories, targets, None, TrainConfig()).values())
            branches.backward(step, total)
        outputs = step.outputs
    else:
        outputs = net.forward_train(images, masks)
        total = sum(trainer.maskcl_losses(outputs, memories, targets, None, TrainConfig()).values())
        total.backward()
    return total.item(), outputs, [None if p.grad is None else p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("variant", [{}, {"cross_view": False}, {"fusion": False}])
def test_parallel_branch_step_is_bit_identical_to_a_one_thread_step(variant, torch_threads) -> None:
    """Each branch back-propagates its leaves' gradients on its own thread: the chain rule at the
    feature boundary, so every loss, output and parameter gradient equals the joint step's bits."""
    torch_threads(1)
    gen = torch.Generator().manual_seed(0)
    images, masks = torch.randn(8, 3, 32, 16, generator=gen), torch.randn(8, 3, 32, 16, generator=gen)
    torch.manual_seed(0)
    joint_net = TwoBranchNet("resnet18", pretrained="none", method="maskcl", **variant).train()
    parallel_net = copy.deepcopy(joint_net)
    joint = _step_grads(joint_net, images, masks, parallel=False)
    parallel = _step_grads(parallel_net, images, masks, parallel=True)
    assert joint[0] == parallel[0]
    for name in ("f_rgb", "g_rgb", "f_mask", "h"):
        a, b = getattr(joint[1], name), getattr(parallel[1], name)
        assert (a is None and b is None) or torch.equal(a, b), name
    grads = list(zip(joint_net.named_parameters(), joint[2], parallel[2]))
    assert sum(g is not None for _, g, _ in grads) > 100  # both backbones received gradients
    for (name, _), a, b in grads:
        assert (a is None and b is None) or torch.equal(a, b), name
    # BN running statistics moved the same way in both branches
    for (name, a), b in zip(joint_net.named_buffers(), parallel_net.buffers()):
        assert torch.equal(a, b), name
    assert torch.get_num_threads() == 1  # the session restored the thread count


def test_parallel_branches_run_equals_a_one_thread_run_and_resumes_exactly(
    tiny_engine, tmp_path: Path, torch_threads, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maskcl.engine.branches import ParallelBranches

    splits, mask_root = tiny_engine
    on = {"train.parallel_branches": True}
    steps: list[int] = []
    real_backward = ParallelBranches.backward

    def counted(self, step, total):
        steps.append(self.threads_per_branch)
        real_backward(self, step, total)

    monkeypatch.setattr(ParallelBranches, "backward", counted)
    torch_threads(1)
    serial = trainer.fit(tiny_config(splits.root, mask_root), tmp_path / "serial")
    torch_threads(2)
    parallel = trainer.fit(tiny_config(splits.root, mask_root, **on), tmp_path / "parallel")
    assert torch.get_num_threads() == 2
    assert steps == [1] * 6  # 2 epochs × 3 iterations, one thread per branch; none at one thread
    trainer.fit(tiny_config(splits.root, mask_root, **on, **{"train.epochs": 1}), tmp_path / "split")
    resumed = trainer.fit(tiny_config(splits.root, mask_root, **on), tmp_path / "split")
    assert [h["iter_loss"] for h in serial.history] == [h["iter_loss"] for h in parallel.history]
    assert [h["iter_loss"] for h in parallel.history] == [h["iter_loss"] for h in resumed.history]
    assert serial.metrics == parallel.metrics == resumed.metrics
    weights = [load_checkpoint(run / trainer.CHECKPOINT)["model"] for run in (tmp_path / "serial", tmp_path / "parallel")]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
