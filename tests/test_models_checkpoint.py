"""Network shapes and gradient paths, pretrained-weight errors, checkpoint round trip and mismatch."""

from __future__ import annotations

import random
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

from maskcl.engine.checkpoint import capture_rng, load_checkpoint, load_model_state, restore_rng, save_checkpoint
from maskcl.errors import CheckpointError
from maskcl.models import TwoBranchNet
from maskcl.models.backbone import build_trunk


@pytest.fixture(scope="module")
def net() -> TwoBranchNet:
    torch.manual_seed(0)
    return TwoBranchNet("resnet18", pretrained="none", method="maskcl")


def test_train_outputs_are_unit_norm_with_expected_shapes(net: TwoBranchNet) -> None:
    net.train()
    out = net.forward_train(torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32))
    for name in ("f_rgb", "g_rgb", "f_mask", "h"):
        tensor = getattr(out, name)
        assert tensor.shape == (4, 512), name
        assert torch.allclose(tensor.norm(dim=1), torch.ones(4), atol=1e-5), name
    net.eval()
    assert net(torch.randn(2, 3, 64, 32)).shape == (2, 512)


def test_last_stride_one_keeps_layer4_resolution(net: TwoBranchNet) -> None:
    net.eval()
    with torch.no_grad():
        assert net.rgb.trunk(torch.randn(1, 3, 64, 32)).shape[-2:] == (4, 2)  # total stride 16, not 32


def test_fusion_loss_reaches_only_the_fusion_head(net: TwoBranchNet) -> None:
    net.train()
    net.zero_grad()
    out = net.forward_train(torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32))
    out.h.sum().backward()
    assert net.fusion.fc.weight.grad is not None
    assert all(p.grad is None for p in net.rgb.parameters())
    assert all(p.grad is None for p in net.mask.parameters())
    assert not net.rgb.neck.bias.requires_grad  # BN-neck bias frozen


def test_rgb_method_has_no_mask_branch() -> None:
    rgb = TwoBranchNet("resnet18", pretrained="none", method="rgb")
    assert rgb.mask is None and rgb.fusion is None and rgb.rgb.proj is None
    out = rgb.train().forward_train(torch.randn(2, 3, 64, 32))
    assert out.f_mask is None and out.g_rgb is None


def test_missing_pretrained_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        build_trunk("resnet18", str(tmp_path / "nope.pth"))


def test_pretrained_file_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    trunk = build_trunk("resnet18", str(path))
    assert torch.equal(trunk[0].weight, source.conv1.weight)


def test_a_maskcl_run_checkpoint_starts_both_branches_from_its_rgb_trunk(tmp_path: Path) -> None:
    """model.pretrained may name a run's last.pt: every trunk weight and BN statistic of the RGB
    branch reaches both branches of the new network; the necks and heads start fresh."""
    torch.manual_seed(5)
    trained = TwoBranchNet("resnet18", pretrained="none", method="maskcl")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
        trained.rgb.trunk[1].running_mean.add_(1.5)
    path = tmp_path / "last.pt"
    save_checkpoint({"model": trained.state_dict(), "epoch": 1}, path)
    started = TwoBranchNet("resnet18", pretrained=str(path), method="maskcl")
    source = trained.rgb.trunk.state_dict()
    for branch in (started.rgb, started.mask):
        for key, value in branch.trunk.state_dict().items():
            assert torch.equal(value, source[key]), key
    assert not torch.equal(started.rgb.neck.weight, trained.rgb.neck.weight)


def test_offline_imagenet_names_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(CheckpointError, match=r"torch hub cache .*resnet18-.*\.pth"):
        build_trunk("resnet18", "imagenet")


def test_checkpoint_round_trip_with_rng(tmp_path: Path, net: TwoBranchNet) -> None:
    generator = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"model": net.state_dict(), "epoch": 3, "rng": capture_rng(generator), "config": {"seed": 1}}
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(state, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = load_checkpoint(path)
    restore_rng(loaded["rng"], generator)
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    assert again == expected and loaded["epoch"] == 3
    other = TwoBranchNet("resnet18", pretrained="none", method="maskcl")
    load_model_state(other, loaded["model"], path)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))


def test_checkpoint_from_another_architecture_names_keys(tmp_path: Path, net: TwoBranchNet) -> None:
    rgb_only = TwoBranchNet("resnet18", pretrained="none", method="rgb")
    with pytest.raises(CheckpointError, match=r"another architecture.*unexpected \d+ keys \(e\.g\. rgb\.proj"):
        load_model_state(rgb_only, net.state_dict(), "x.pt")


def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
