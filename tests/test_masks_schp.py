"""SCHP network, checkpoint loading and inference preprocessing (random weights, tiny inputs)."""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from maskcl.errors import CheckpointError
from maskcl.masks.schp import (
    ABN,
    AugmentCE2P,
    SCHPOutput,
    SCHPParser,
    load_schp_checkpoint,
    official_state_dict,
    parsing_image,
)


def _cheap_random_state(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's state in the official layout, every tensor a strided window of one small random vector.

    torch.save writes a shared storage once, so the 603-tensor checkpoint is ~1 MB instead of
    ~260 MB, yet loads like the real one (load_state_dict copies values element-wise).
    """
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1 << 18, generator=gen) * 0.02
    positive = base.abs() + 0.5  # running_var must be > 0
    state = {}
    for key, value in official_state_dict(model).items():
        src = positive if key.endswith("running_var") else base
        strides = [1] * value.ndim
        for d in range(value.ndim - 2, -1, -1):  # small, co-prime-ish strides keep offsets inside `base`
            strides[d] = 3 + 7 * (value.ndim - 1 - d)
        offset = zlib.crc32(key.encode()) % 1000  # deterministic (str hash is salted)
        state[key] = src.as_strided(tuple(value.shape), tuple(strides), offset)
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = AugmentCE2P(20)
    state = _cheap_random_state(model)
    path = tmp_path_factory.mktemp("schp") / "exp-schp-lip.pth"
    torch.save({"state_dict": state}, path)
    return path, state


def test_official_layout_is_603_tensors_without_counters(checkpoint):
    _, state = checkpoint
    assert len(state) == 603
    assert all(k.startswith("module.") for k in state)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert state["module.fushion.3.weight"].shape == (20, 256, 1, 1)
    assert state["module.decoder.conv4.weight"].shape == (20, 256, 1, 1)


def test_checkpoint_loads_strictly_and_parses_a_small_image(checkpoint):
    path, state = checkpoint
    model = load_schp_checkpoint(path)
    assert model.num_classes == 20 and not model.training
    loaded = model.state_dict()
    for key in ("layer3.22.bn3.running_var", "fushion.1.weight", "context_encoding.stages.3.1.weight"):
        assert torch.equal(loaded[key], state["module." + key])
    parser = SCHPParser(model, "lip", device="cpu", input_size=(32, 32))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 20, 3), dtype=np.uint8), rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)]
    logits = parser.logits(images)
    assert [tuple(lg.shape) for lg in logits] == [(20, 40, 20), (20, 24, 30)]
    assert all(torch.isfinite(lg).all() for lg in logits)
    parsings = parser.parse(images)
    assert [p.shape for p in parsings] == [(40, 20), (24, 30)]
    assert all(p.dtype == np.uint8 and p.max() < 20 for p in parsings)
    png = parsing_image(parsings[0], 20)
    assert png.mode == "P" and np.array_equal(np.array(png), parsings[0])
    assert png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]


def test_wrong_class_count_names_both_label_sets(checkpoint):
    path, _ = checkpoint
    with pytest.raises(CheckpointError, match=r"20 classes \(label set lip\).*18 classes \(label set atr\)"):
        load_schp_checkpoint(path, num_classes=18)


def test_missing_and_unexpected_keys_are_listed(checkpoint, tmp_path):
    _, state = checkpoint
    broken = dict(state)
    del broken["module.edge.conv5.bias"]
    broken["module.aux.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": broken}, bad)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\) \['edge.conv5.bias'\], 1 unexpected key\(s\) \['aux.weight'\]") as err:
        load_schp_checkpoint(bad)
    assert "label set lip" in str(err.value)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_schp_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_schp_checkpoint(tmp_path / "nope.pth")


def test_abn_uses_abs_weight_plus_eps_and_its_activation():
    x = torch.tensor([[[[1.0]], [[-2.0]]]])  # [1, 2, 1, 1]
    for activation in ("none", "leaky_relu"):
        abn = ABN(2, activation=activation).eval()
        with torch.no_grad():
            abn.weight.copy_(torch.tensor([-2.0, 0.5]))
            abn.bias.copy_(torch.tensor([0.1, -0.1]))
            abn.running_mean.copy_(torch.tensor([0.5, 0.0]))
            abn.running_var.copy_(torch.tensor([4.0, 1.0]))
        eps = 1e-5
        expected = torch.tensor(
            [(1.0 - 0.5) / (4 + eps) ** 0.5 * (2 + eps) + 0.1, (-2.0 - 0.0) / (1 + eps) ** 0.5 * (0.5 + eps) - 0.1]
        )
        if activation == "leaky_relu":
            expected = torch.where(expected > 0, expected, 0.01 * expected)
        assert torch.allclose(abn(x).flatten(), expected, atol=1e-6)
    assert isinstance(abn, nn.BatchNorm2d) and set(abn.state_dict()) >= {"weight", "bias", "running_mean", "running_var"}


# ---------------------------------------------------------------- preprocessing, with stub networks


class _PositionStub(nn.Module):
    """Logits that depend only on the position in the network input: class ``left`` on the left
    half of the input, ``right`` on the right half, at 1/4 resolution. Records its input."""

    def __init__(self, num_classes: int = 20, left: int = 14, right: int = 15) -> None:
        super().__init__()
        self.num_classes, self.left, self.right = num_classes, left, right
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> SCHPOutput:
        self.seen = x
        b, _, h, w = x.shape
        out = torch.zeros(b, self.num_classes, h // 4, w // 4)
        half = (w // 4) // 2
        out[:, self.left, :, :half] = 1.0
        out[:, self.right, :, half:] = 1.0
        return SCHPOutput(parsing=out, fusion=out, edge=out[:, :2])


def _cv2_style_warp(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Plain reimplementation of SCHP's crop: 3-point affine (get_affine_transform) + bilinear
    warpAffine with a black constant border; float output before uint8 rounding."""
    h, w = image.shape[:2]
    out_h, out_w = out_hw
    aspect = out_w / out_h
    bw, bh = w - 1.0, h - 1.0
    if bw > aspect * bh:
        bh = bw / aspect
    elif bw < aspect * bh:
        bw = bh * aspect
    center = np.array([(w - 1) / 2, (h - 1) / 2])
    third = lambda a, b: b + np.array([-(a - b)[1], (a - b)[0]])  # noqa: E731
    src = [center, center + [0, -bw / 2]]
    dst = [np.array([(out_w - 1) / 2, (out_h - 1) / 2]), np.array([(out_w - 1) / 2, (out_h - 1) / 2 - (out_w - 1) / 2])]
    src.append(third(*src))
    dst.append(third(*dst))
    # solve dst = A @ [src, 1]
    a_mat = np.array([[*p, 1.0] for p in src])
    affine = np.linalg.solve(a_mat, np.array(dst)).T  # [2, 3]
    inverse = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
    out = np.zeros((out_h, out_w, image.shape[2]))
    padded = np.zeros((h + 2, w + 2, image.shape[2]))
    padded[1:-1, 1:-1] = image
    for v in range(out_h):
        for u in range(out_w):
            x, y = inverse @ [u, v, 1.0]
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            acc = np.zeros(image.shape[2])
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy, xx = y0 + dy, x0 + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        acc += wy * wx * padded[yy + 1, xx + 1]
            out[v, u] = acc
    return out


@pytest.mark.parametrize("shape", [(9, 5, 3), (4, 11, 3), (12, 12, 3)])  # tall, wide, already square
def test_input_warp_matches_schp_affine_construction(shape):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    parser = SCHPParser(_PositionStub(), "lip", device="cpu", input_size=(12, 12))
    warped, _ = parser._warp_in(image)  # [3, 12, 12] BGR in 0..1
    expected = _cv2_style_warp(image[:, :, ::-1].astype(np.float64), (12, 12))
    got = warped.permute(1, 2, 0).numpy() * 255
    assert np.abs(got - expected).max() <= 0.5 + 1e-3  # only uint8 rounding


def test_bgr_normalisation_and_black_borders():
    stub = _PositionStub()
    parser = SCHPParser(stub, "lip", device="cpu", input_size=(16, 16))
    red = np.zeros((16, 8, 3), dtype=np.uint8)
    red[..., 0] = 255
    parser.logits([red])
    x = stub.seen[0]  # [3, 16, 16] BGR normalised
    centre, border = x[:, 8, 8], x[:, 8, 0]
    assert torch.allclose(centre, torch.tensor([(0 - 0.406) / 0.225, (0 - 0.456) / 0.224, (1 - 0.485) / 0.229]), atol=1e-5)
    assert torch.allclose(border, torch.tensor([-0.406 / 0.225, -0.456 / 0.224, -0.485 / 0.229]), atol=1e-5)


def test_logits_are_warped_back_to_the_image():
    """A tall image sits in the middle columns of the square input: its left half must get the
    class the stub puts on the input's left half, its right half the other one."""
    parser = SCHPParser(_PositionStub(left=1, right=2), "lip", device="cpu", input_size=(32, 32))
    parsing = parser.parse([np.full((40, 10, 3), 128, dtype=np.uint8)])[0]
    assert parsing.shape == (40, 10)
    assert (parsing[:, :4] == 1).all() and (parsing[:, 6:] == 2).all()


def test_flip_test_swaps_left_and_right_labels():
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    plain = SCHPParser(_PositionStub(), "lip", device="cpu", input_size=(32, 32)).parse([image])[0]
    flipped = SCHPParser(_PositionStub(), "lip", device="cpu", input_size=(32, 32), flip=True).parse([image])[0]
    # mirrored input → stub's left/right classes land mirrored; swapping 14↔15 restores agreement
    assert (plain[:, :12] == 14).all() and (plain[:, 20:] == 15).all()
    assert np.array_equal(plain, flipped)


def test_parser_refuses_a_model_of_another_label_set():
    with pytest.raises(CheckpointError, match="18 classes.*'lip' expects 20"):
        SCHPParser(_PositionStub(num_classes=18), "lip", device="cpu")


def test_generate_masks_runs_schp_from_a_checkpoint(checkpoint, tmp_path):
    from PIL import Image

    from maskcl.masks.generate import generate_masks

    path, _ = checkpoint
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(2)
    images = []
    for name, size in (("a.jpg", (20, 10)), ("b.png", (12, 14))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "train" / name)
        images.append(root / "train" / name)
    summary = generate_masks(
        images, root, tmp_path / "masks", source="schp", checkpoint=path, input_size=(32, 32), device="cpu",
        batch_size=2, progress=False,
    )  # fmt: skip
    assert summary.made == 2
    for image, name in zip(images, ("a.png", "b.png")):
        with Image.open(tmp_path / "masks/train" / name) as mask, Image.open(image) as original:
            assert mask.mode == "L" and mask.size == original.size
            assert set(np.unique(np.array(mask))) <= {0, 255}
    with pytest.raises(CheckpointError, match="18 classes"):
        generate_masks(images, root, tmp_path / "m2", source="schp", checkpoint=path, label_set="atr", progress=False)
