"""Mask generation: import of parsing PNGs, ground truth, resume, atomic writes, errors, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskcl.data.records import Record
from maskcl.errors import MaskError
from maskcl.masks import generate as gen
from maskcl.masks.generate import TMP_SUFFIX, check_masks, generate_masks
from maskcl.masks.labels import voc_palette

REPO = Path(__file__).resolve().parents[1]


def _write_parsing(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = Image.fromarray(ids.astype(np.uint8))
    png.putpalette(voc_palette(20))
    png.save(path)


def _tree(tmp_path: Path, n: int = 3, size: tuple[int, int] = (6, 4)) -> tuple[Path, Path, list[Path], list[np.ndarray]]:
    """Images ``root/{train,query}/...`` (png and jpg, nested pid folder) + mirrored parsing PNGs."""
    root, parsing_dir = tmp_path / "data", tmp_path / "parsing"
    rng = np.random.default_rng(0)
    rel = [Path("train/001/a.png"), Path("query/b.jpg"), Path("train/002/a.png"), Path("train/c.png"), Path("query/d.png")]
    images, parsings = [], []
    for i in range(n):
        image = root / rel[i]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(image)
        ids = rng.integers(0, 20, size).astype(np.uint8)
        ids[0, 0] = 0
        _write_parsing(parsing_dir / rel[i].with_suffix(".png"), ids)
        images.append(image)
        parsings.append(ids)
    return root, parsing_dir, images, parsings


def _no_temps(folder: Path) -> bool:
    return not any(p.name.endswith(TMP_SUFFIX) for p in folder.rglob("*"))


def test_import_writes_silhouettes_at_the_mirrored_paths(tmp_path):
    root, parsing_dir, images, parsings = _tree(tmp_path)
    masks = tmp_path / "masks"
    summary = generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    assert (summary.made, summary.skipped, summary.failed) == (3, 0, 0)
    expected = [masks / "train/001/a.png", masks / "query/b.png", masks / "train/002/a.png"]
    for path, ids in zip(expected, parsings):
        with Image.open(path) as mask:
            assert mask.mode == "L"
            assert np.array_equal(np.array(mask), np.where(ids != 0, 255, 0))
    assert _no_temps(masks)


def test_import_parsing_grey_mode(tmp_path):
    root, parsing_dir, images, parsings = _tree(tmp_path, n=1)
    masks = tmp_path / "masks"
    generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, mode="parsing_grey", progress=False)
    table = np.array([0, 38, 75, 113, 15, 53, 90, 128, 19, 57, 94, 133, 34, 72, 109, 147, 38, 76, 113, 151])
    assert np.array_equal(np.array(Image.open(masks / "train/001/a.png")), table[parsings[0]])


def test_resume_skips_existing_and_force_remakes(tmp_path):
    root, parsing_dir, images, _ = _tree(tmp_path)
    masks = tmp_path / "masks"
    generate_masks(images[:1], root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    first = masks / "train/001/a.png"
    Image.new("L", (4, 6), 7).save(first)  # a sentinel: must survive a resume
    summary = generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    assert (summary.made, summary.skipped) == (2, 1)
    assert np.array(Image.open(first)).max() == 7
    summary = generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, force=True, progress=False)
    assert (summary.made, summary.skipped) == (3, 0)
    assert np.array(Image.open(first)).max() == 255


def test_missing_parsing_pngs_are_counted_and_named(tmp_path):
    root, parsing_dir, images, _ = _tree(tmp_path, n=3)
    (parsing_dir / "query/b.png").unlink()
    (parsing_dir / "train/002/a.png").unlink()
    masks = tmp_path / "masks"
    with pytest.raises(MaskError, match=r"2 of 3 parsing PNG\(s\) missing") as err:
        generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    assert "query/b.png" in str(err.value) and "train/002/a.png" in str(err.value)
    assert not masks.exists() or not any(masks.rglob("*.png"))  # fails before any work


def test_parsing_of_another_size_is_an_error_naming_both_sizes(tmp_path):
    root, parsing_dir, images, _ = _tree(tmp_path, n=2)
    _write_parsing(parsing_dir / "query/b.png", np.zeros((5, 4), np.uint8))
    masks = tmp_path / "masks"
    with pytest.raises(MaskError, match=r"failed 1.*query/b.png.*4×5; expected its image's size 4×6"):
        generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    assert (masks / "train/001/a.png").is_file()  # the good one was still made
    summary = generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, strict=False, progress=False)
    assert (summary.made, summary.skipped, summary.failed) == (0, 1, 1)


def test_a_failing_write_leaves_no_partial_file(tmp_path, monkeypatch):
    root, parsing_dir, images, _ = _tree(tmp_path, n=3)
    masks = tmp_path / "masks"
    real_save = gen._save_png
    calls = []

    def half_then_fail(image, fileobj):
        calls.append(1)
        if len(calls) == 2:
            fileobj.write(b"\x89PNG\r\n\x1a\n partial")
            raise OSError("disk full (simulated)")
        real_save(image, fileobj)

    monkeypatch.setattr(gen, "_save_png", half_then_fail)
    with pytest.raises(MaskError, match="disk full"):
        generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    assert not (masks / "query/b.png").exists()
    assert _no_temps(masks)
    monkeypatch.setattr(gen, "_save_png", real_save)
    summary = generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    assert (summary.made, summary.skipped) == (1, 2)


def test_a_killed_run_leaves_only_whole_masks_and_the_next_run_cleans_up(tmp_path):
    root, parsing_dir, images, _ = _tree(tmp_path, n=5)
    masks = tmp_path / "masks"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from maskcl.masks import generate as gen
        real, calls = gen._save_png, []
        def stall(image, fileobj):
            calls.append(1)
            if len(calls) == 3:  # third mask: half written, then hang until killed
                fileobj.write(b"\\x89PNG\\r\\n\\x1a\\n partial"); fileobj.flush()
                Path("stalled").touch()  # tell the test it may kill now
                time.sleep(60)
            real(image, fileobj)
        gen._save_png = stall
        images = [Path(p) for p in {[str(p) for p in images]!r}]
        gen.generate_masks(images, {str(root)!r}, {str(masks)!r}, source="import",
                           parsing_dir={str(parsing_dir)!r}, progress=False)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (tmp_path / "stalled").exists():
            assert proc.poll() is None, "generation ended before the stall"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not _no_temps(masks)  # the kill hit mid-write
    made = sorted(masks.rglob("*.png"))
    assert len(made) == 2
    for path in made:
        with Image.open(path) as mask:
            mask.load()  # decodes: a whole PNG
    summary = generate_masks(images, root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    assert (summary.made, summary.skipped, summary.stale_removed) == (3, 2, 1)
    assert _no_temps(masks)


def test_images_outside_the_dataset_root_are_refused(tmp_path):
    root, parsing_dir, images, _ = _tree(tmp_path, n=1)
    stray = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 6)).save(stray)
    with pytest.raises(MaskError, match="1 image\\(s\\) are not under the dataset root"):
        generate_masks([*images, stray], root, tmp_path / "masks", source="import", parsing_dir=parsing_dir, progress=False)


def test_check_masks_reports_missing_count_and_first_few(tmp_path):
    root, parsing_dir, images, _ = _tree(tmp_path, n=5)
    masks = tmp_path / "masks"
    generate_masks(images[:2], root, masks, source="import", parsing_dir=parsing_dir, progress=False)
    records = [Record(p, i, i, 0) for i, p in enumerate(images)]
    assert check_masks(records[:2], root, masks) == [masks / "train/001/a.png", masks / "query/b.png"]
    with pytest.raises(MaskError, match=r"3 of 5 mask\(s\) missing.*train/002/a.png.*train/c.png.*query/d.png.*maskcl masks"):
        check_masks(records, root, masks)


def test_check_masks_size(tmp_path):
    root, parsing_dir, images, _ = _tree(tmp_path, n=1)
    masks = tmp_path / "masks"
    (masks / "train/001").mkdir(parents=True)
    Image.new("L", (3, 3)).save(masks / "train/001/a.png")
    records = [Record(images[0], 0, 0, 0)]
    check_masks(records, root, masks)  # existence only
    with pytest.raises(MaskError, match="differ in size"):
        check_masks(records, root, masks, check_size=True)


def test_schp_source_with_a_parser_writes_masks_and_parsing_pngs(tmp_path):
    import torch

    from maskcl.masks.schp import SCHPOutput, SCHPParser

    class Stub(torch.nn.Module):  # class 5 (Upper-clothes) on the input's left half, 13 (Face) on the right
        num_classes = 20

        def forward(self, x):
            out = torch.zeros(x.shape[0], 20, x.shape[2] // 4, x.shape[3] // 4)
            out[:, 5, :, : out.shape[3] // 2] = 1
            out[:, 13, :, out.shape[3] // 2 :] = 1
            return SCHPOutput(out, out, out[:, :2])

    root, _, images, _ = _tree(tmp_path, n=3, size=(16, 16))
    masks, parsing_out = tmp_path / "masks", tmp_path / "schp_parsing"
    parser = SCHPParser(Stub(), "lip", device="cpu", input_size=(16, 16))
    summary = generate_masks(
        images, root, masks, source="schp", mode="no_clothes", parser=parser, batch_size=2, parsing_out=parsing_out, progress=False
    )
    assert summary.made == 3
    mask = np.array(Image.open(masks / "query/b.png"))
    assert (mask[:, :6] == 0).all() and (mask[:, 10:] == 255).all()  # clothes removed, face kept
    with Image.open(parsing_out / "query/b.png") as png:
        assert png.mode == "P" and set(np.unique(np.array(png))) == {5, 13}


def test_ground_truth_of_the_synthetic_generator_via_the_cli(tmp_path):
    from maskcl.cli import main
    from maskcl.data.synthetic import SynthSpec, generate_synthetic

    ltcc = generate_synthetic(SynthSpec(identities=4, outfits=1, cameras=2, images_per=1, height=32, width=16), tmp_path / "synth", progress=False)
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    masks = tmp_path / "masks"
    argv = ["masks", "--params", str(params), "--set", f"dataset.root={ltcc}", "--set", f"dataset.mask_root={masks}", "--no-progress"]
    assert main(argv) == 0
    images = sorted(p for p in ltcc.rglob("*.png"))
    assert images
    for image in images:
        rel = image.relative_to(ltcc)
        parsing = np.array(Image.open(tmp_path / "synth/parsing" / rel))
        assert np.array_equal(np.array(Image.open(masks / rel)), np.where(parsing != 0, 255, 0))
    assert main(argv) == 0  # resume: nothing to do, still fine


def test_cli_reports_a_missing_parsing_folder_on_one_line(tmp_path, capsys):
    from maskcl.cli import main

    root, _, _, _ = _tree(tmp_path, n=1)
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    argv = ["masks", "--params", str(params), "--set", f"dataset.root={root}", "--set", f"dataset.mask_root={tmp_path / 'm'}",
            "--source", "import", "--parsing-dir", str(tmp_path / "nowhere"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskcl masks: error: parsing folder") and "nowhere" in err and "\n" not in err


def test_masks_never_go_into_the_dataset_root(tmp_path):
    from maskcl.errors import ConfigError

    root, parsing_dir, images, _ = _tree(tmp_path, n=1)
    before = (root / "train/001/a.png").read_bytes()
    with pytest.raises(ConfigError, match="is the dataset root"):
        generate_masks(images, root, root, source="import", parsing_dir=parsing_dir, progress=False)
    assert (root / "train/001/a.png").read_bytes() == before
