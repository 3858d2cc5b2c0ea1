"""The synthetic clothes-changing dataset: determinism, LTCC layout, parsing consistency, outfits."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskcl.cli import main
from maskcl.data import synthetic as syn
from maskcl.data.synthetic import SynthSpec, generate_synthetic
from maskcl.errors import OutputExistsError

LTCC_NAME = re.compile(r"^(\d+)_(\d+)_c(\d+)_.*\.png$")
SMALL = SynthSpec(identities=6, outfits=2, cameras=3, images_per=2, height=64, width=32, seed=7)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic(SMALL, out, progress=False)
    return out


def parse(path: Path) -> tuple[int, int, int]:
    match = LTCC_NAME.match(path.name)
    assert match, f"{path.name} breaks the LTCC grammar"
    pid, outfit, cam = (int(g) for g in match.groups())
    return pid, outfit, cam


def test_same_seed_gives_byte_identical_files(small_set: Path, tmp_path: Path) -> None:
    generate_synthetic(SMALL, tmp_path / "again", progress=False)
    assert digest(small_set) == digest(tmp_path / "again")


def test_another_seed_gives_other_images(small_set: Path, tmp_path: Path) -> None:
    other = SynthSpec(**{**SMALL.__dict__, "seed": 8})
    generate_synthetic(other, tmp_path / "other", progress=False)
    assert digest(small_set) != digest(tmp_path / "other")


def test_layout_follows_ltcc_naming_and_counts(small_set: Path) -> None:
    root = small_set / "LTCC_ReID"
    splits = {name: sorted((root / name).glob("*.png")) for name in ("train", "query", "test")}
    per_id = SMALL.outfits * SMALL.cameras * SMALL.images_per
    train_ids = SMALL.identities // 2
    assert len(splits["train"]) == train_ids * per_id
    # one query per (test id, outfit); the rest of the test ids' images form the gallery
    assert len(splits["query"]) == train_ids * SMALL.outfits
    assert len(splits["test"]) == train_ids * per_id - len(splits["query"])
    parsed = {name: [parse(p) for p in files] for name, files in splits.items()}
    assert {pid for pid, _, _ in parsed["train"]} == set(range(train_ids))
    assert {pid for pid, _, _ in parsed["query"]} == set(range(train_ids, SMALL.identities))
    assert {cam for _, _, cam in parsed["train"]} == set(range(1, SMALL.cameras + 1))
    assert {outfit for _, outfit, _ in parsed["train"]} == set(range(1, SMALL.outfits + 1))
    info = root / "info"
    assert [int(x) for x in (info / "cloth-change_id_train.txt").read_text().split()] == list(range(train_ids))
    assert [int(x) for x in (info / "cloth-change_id_test.txt").read_text().split()] == list(
        range(train_ids, SMALL.identities)
    )
    assert (info / "cloth-unchange_id_test.txt").read_text() == ""


def test_every_image_has_a_parsing_map_in_schp_format(small_set: Path) -> None:
    lip_ids = set(range(20))
    for image_path in sorted((small_set / "LTCC_ReID").glob("[tq]*/*.png")):
        parsing_path = small_set / "parsing" / image_path.parent.name / image_path.name
        parsing = Image.open(parsing_path)
        assert parsing.mode == "P" and parsing.size == Image.open(image_path).size
        labels = np.array(parsing)
        assert set(np.unique(labels)) <= lip_ids and (labels > 0).any()
    palette = Image.open(parsing_path).getpalette()[:9]
    assert palette == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # VOC: background, hat, hair


def test_person_pixels_are_exactly_the_non_background_labels() -> None:
    """With blur, texture and noise off, every labelled pixel carries its part's colour."""
    body = syn._body(0, 3)
    outfit = syn.Outfit(upper=1, lower=2, shoes=5, pattern="plain", long_sleeves=True, shorts=False)
    camera = syn.Camera((100.0, 100.0, 100.0), 0.0, 1.0, (1.0, 1.0, 1.0), 1.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    image, labels = syn.render(body, outfit, camera, 96, 48, rng)
    image = image.astype(float)
    # background: one colour per row (a vertical gradient) up to sensor noise
    for row in range(0, 96, 8):
        background = image[row][labels[row] == syn.BACKGROUND]
        assert np.abs(background - np.median(background, axis=0)).max() < 15
    # person pixels: each part's colour, up to the per-image shading factor and noise
    shade = np.median(image[labels == syn.UPPER] / syn.CLOTHES_PALETTE[1].clip(1), axis=0)
    for label, colour in ((syn.UPPER, syn.CLOTHES_PALETTE[1]), (syn.PANTS, syn.CLOTHES_PALETTE[2]), (syn.FACE, np.array(body.skin))):
        pixels = image[labels == label]
        assert len(pixels) > 0
        assert np.abs(pixels - np.clip(colour * shade, 0, 255)).mean() < 15


def _part_stats(small_set: Path, pid: int, outfit: int, cam: int) -> tuple[np.ndarray, np.ndarray, int]:
    [image_path] = [p for p in sorted((small_set / "LTCC_ReID" / "train").glob(f"{pid:03d}_{outfit}_c{cam}_*.png"))][:1]
    image = np.array(Image.open(image_path).convert("RGB")).astype(float)
    labels = np.array(Image.open(small_set / "parsing" / "train" / image_path.name))
    rows = np.flatnonzero((labels > 0).any(axis=1))
    return image[labels == syn.UPPER].mean(0), image[labels == syn.FACE].mean(0), int(rows[-1] - rows[0])


def test_outfits_change_clothes_while_body_traits_stay(small_set: Path) -> None:
    for pid in range(SMALL.identities // 2):
        for cam in range(1, SMALL.cameras + 1):
            upper_a, face_a, height_a = _part_stats(small_set, pid, 1, cam)
            upper_b, face_b, height_b = _part_stats(small_set, pid, 2, cam)
            assert np.abs(upper_a - upper_b).max() > 25, "outfits must differ in upper-clothes colour"
            assert np.abs(face_a - face_b).max() < 25, "skin colour is an identity trait"
            assert abs(height_a - height_b) <= 0.08 * SMALL.height, "stature is an identity trait"


def test_clothes_palette_is_shared_across_identities() -> None:
    uppers = [o.upper for pid in range(20) for o in syn._outfits(0, pid, 3)]
    counts = np.bincount(uppers, minlength=len(syn.CLOTHES_PALETTE))
    assert (counts > 1).sum() >= len(syn.CLOTHES_PALETTE) - 1  # colours recur across people


def test_non_empty_output_is_refused_without_force(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        generate_synthetic(SMALL, tmp_path, progress=False)
    assert keep.read_text() == "mine" and not (tmp_path / "LTCC_ReID").exists()


def test_force_replaces_only_the_generated_dataset(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate_synthetic(SynthSpec(**{**SMALL.__dict__, "seed": 1}), out, progress=False)
    (out / "notes.txt").write_text("mine")
    generate_synthetic(SMALL, out, force=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    fresh = {k: v for k, v in digest(out).items() if k != "notes.txt"}
    assert fresh == digest(small_set)


def test_cli_refuses_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.txt").write_text("keep")
    code = main(["synth", "--out", str(tmp_path), "--identities", "4", "--no-progress"])
    assert code != 0
    err = capsys.readouterr().err
    assert "not empty" in err and str(tmp_path) in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "x.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "option, value, key",
    [("--identities", "3", "synth.identities"), ("--cameras", "1", "synth.cameras"), ("--images-per", "0", "synth.images_per"),
     ("--camera-strength", "1.5", "synth.camera_strength"), ("--shade", "-1", "synth.shade")],
)
def test_cli_rejects_invalid_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, key: str) -> None:
    code = main(["synth", "--out", str(tmp_path / "o"), option, value, "--no-progress"])
    assert code == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_counts_match_options(tmp_path: Path) -> None:
    args = ["synth", "--out", str(tmp_path), "--identities", "4", "--outfits", "2", "--cameras", "2"]
    args += ["--images-per", "1", "--height", "48", "--width", "24", "--no-progress"]
    assert main(args) == 0
    root = tmp_path / "LTCC_ReID"
    total = sum(len(list((root / s).glob("*.png"))) for s in ("train", "query", "test"))
    assert total == 4 * 2 * 2 * 1
    assert Image.open(next((root / "train").glob("*.png"))).size == (24, 48)


def test_every_outfit_has_its_own_upper_and_new_lowers_without_keep_lower() -> None:
    for pid in range(20):
        outfits = syn._outfits(0, pid, 6, keep_lower=0.0)
        assert len({o.upper for o in outfits}) == 6
        assert len({o.lower for o in outfits}) == 6


def test_keep_lower_re_uses_trousers_already_worn() -> None:
    for pid in range(20):
        outfits = syn._outfits(0, pid, 6, keep_lower=1.0)
        assert len({o.upper for o in outfits}) == 6  # still six different clothes ids
        for k, outfit in enumerate(outfits[1:], start=1):
            worn = outfits[:k]
            assert any((outfit.lower, outfit.shorts, outfit.shoes) == (o.lower, o.shorts, o.shoes) for o in worn)


def test_shades_give_every_garment_its_own_colour_and_re_worn_trousers_keep_theirs() -> None:
    for pid in range(20):
        outfits = syn._shaded(0, pid, syn._outfits(0, pid, 6, keep_lower=0.7), shade=40.0)
        assert len({o.upper_shade for o in outfits}) == 6  # every top its own shade
        for k, outfit in enumerate(outfits):
            for earlier in outfits[:k]:
                if (outfit.lower, outfit.shorts, outfit.shoes) == (earlier.lower, earlier.shorts, earlier.shoes):
                    assert (outfit.lower_shade, outfit.shoes_shade) == (earlier.lower_shade, earlier.shoes_shade)


def test_no_shade_leaves_outfits_and_pixels_as_the_palette_draws_them() -> None:
    plain = syn._outfits(0, 3, 4, keep_lower=0.5)
    assert syn._shaded(0, 3, plain, shade=0.0) == plain
    body, camera = syn._body(0, 3), replace(syn._camera(0, 1), blur=0.0)  # no blur: colours stay in their parts
    shaded = syn._shaded(0, 3, plain, shade=60.0)[0]
    draw = lambda outfit: syn.render(body, outfit, camera, 64, 32, np.random.default_rng(5))  # noqa: E731
    (image, labels), (shaded_image, shaded_labels) = draw(plain[0]), draw(shaded)
    assert np.array_equal(labels, shaded_labels)  # the shade changes colour, never the body
    upper = labels == syn.UPPER
    assert not np.array_equal(image[upper], shaded_image[upper])
    assert np.array_equal(image[labels == syn.FACE], shaded_image[labels == syn.FACE])


def test_camera_strength_scales_every_camera_effect_toward_a_neutral_camera() -> None:
    full = [syn._camera(0, cam, 1.0) for cam in range(4)]
    none = [syn._camera(0, cam, 0.0) for cam in range(4)]
    half = [syn._camera(0, cam, 0.5) for cam in range(4)]
    assert full == [syn._camera(0, cam) for cam in range(4)]  # 1 is the generator as it always was
    assert len(set(none)) == 1 and none[0].tint == (1.0, 1.0, 1.0) and none[0].gradient == 0.0
    for f, h, n in zip(full, half, none):
        assert h.light == pytest.approx((f.light + n.light) / 2)
        assert h.blur == pytest.approx((f.blur + n.blur) / 2)
        assert h.background == pytest.approx(tuple((a + b) / 2 for a, b in zip(f.background, n.background)))


def test_calibrated_default_generator_is_byte_deterministic(tmp_path: Path) -> None:
    """params.yaml's synth knobs (a few identities, to stay fast): the same seed writes the same
    bytes twice, and the parsing maps agree with the images' person pixels."""
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["synth"]
    spec = SynthSpec(**{**params, "identities": 4})
    generate_synthetic(spec, tmp_path / "a", progress=False)
    generate_synthetic(spec, tmp_path / "b", progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    per_id = spec.outfits * spec.cameras * spec.images_per
    assert len(list((tmp_path / "a" / "LTCC_ReID" / "train").glob("*.png"))) == 2 * per_id
