"""Dataset loaders on tiny fake trees written in each dataset's real naming."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from maskcl.data import DATASETS, build_dataset
from maskcl.data.datasets import celebreid, deepchange, ltcc, market1501, prcc, vcclothes
from maskcl.errors import ConfigError, DatasetError


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (120, 30, 60)).save(path)


def write_images(folder: Path, names: list[str]) -> None:
    names = list(names)
    random.Random(0).shuffle(names)  # creation order must not matter
    for name in names:
        write_image(folder / name)


# ------------------------------------------------------------------------------------ LTCC


def make_ltcc(root: Path, *, info: bool = True) -> Path:
    base = root / "LTCC_ReID"
    write_images(base / "train", ["007_1_c2_000001.png", "005_1_c1_000002.png", "005_2_c3_000003.png", "007_1_c4_000004.png"])
    write_images(base / "query", ["010_1_c1_000010.png", "012_1_c2_000011.png"])
    write_images(
        base / "test",
        ["010_1_c2_000020.png", "010_2_c3_000021.png", "012_1_c1_000022.png", "012_1_c5_000023.png", "100_1_c1_000024.png"],
    )
    if info:
        (base / "info").mkdir()
        (base / "info" / "cloth-change_id_train.txt").write_text("5\n")
        (base / "info" / "cloth-unchange_id_train.txt").write_text(" 7, \n\n")
        (base / "info" / "cloth-change_id_test.txt").write_text("10\n100\n")
        (base / "info" / "cloth-unchange_id_test.txt").write_text("12\n")
    return base


def test_ltcc_records_relabel_clothes_and_cameras(tmp_path: Path) -> None:
    base = make_ltcc(tmp_path)
    splits = build_dataset("ltcc", tmp_path)  # resolves the LTCC_ReID alias
    assert splits.root == base
    assert [r.path.name for r in splits.train] == sorted(r.path.name for r in splits.train)
    assert [(r.path.name, r.pid, r.camid) for r in splits.train] == [
        ("005_1_c1_000002.png", 0, 0),
        ("005_2_c3_000003.png", 0, 2),
        ("007_1_c2_000001.png", 1, 1),
        ("007_1_c4_000004.png", 1, 3),
    ]
    # train clothes: sorted (pid, outfit) keys (5,1) (5,2) (7,1) → 0 1 2
    assert [r.clothes_id for r in splits.train] == [0, 1, 2, 2]
    # test pids keep raw values; query and gallery share one clothes map, offset past train's
    test_keys = {(10, 1): 3, (10, 2): 4, (12, 1): 5, (100, 1): 6}
    for record in splits.query + splits.gallery:
        pid, outfit, _ = ltcc.parse_name(record.path.name)
        assert record.pid == pid and record.clothes_id == test_keys[(pid, outfit)]
    assert splits.meta["cc_test_ids"] == [10, 100]
    assert splits.meta["unchange_train_ids"] == [7]
    assert splits.meta["train_raw_pids"] == [5, 7]
    assert splits.protocols[0] == "ltcc_cc_maskcl"


def test_ltcc_count_mismatch_is_a_counted_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_ltcc(tmp_path)
    with caplog.at_level(logging.WARNING):
        splits = build_dataset("ltcc", tmp_path / "LTCC_ReID")
    warnings = splits.meta["warnings"]
    assert any("train: found 2 ids / 4 images" in w and "9576" in w for w in warnings)
    assert any("partial download" in r.message for r in caplog.records)


def test_synthetic_skips_real_counts(tmp_path: Path) -> None:
    make_ltcc(tmp_path)
    splits = build_dataset("synthetic", tmp_path / "LTCC_ReID")
    assert not any("release" in w for w in splits.meta["warnings"])
    assert splits.protocols[0] == "cc"


def test_ltcc_parses_basename_not_path(tmp_path: Path) -> None:
    make_ltcc(tmp_path / "my_cc_2" / "v1_2")
    splits = build_dataset("ltcc", tmp_path / "my_cc_2" / "v1_2")
    assert {r.pid for r in splits.query} == {10, 12}


def test_missing_folder_lists_expected(tmp_path: Path) -> None:
    make_ltcc(tmp_path, info=False)
    with pytest.raises(DatasetError, match="missing 'info'.*cloth-change_id_test.txt"):
        build_dataset("ltcc", tmp_path / "LTCC_ReID")
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("ltcc", tmp_path / "nope")


def test_bad_name_names_file_and_grammar(tmp_path: Path) -> None:
    base = make_ltcc(tmp_path)
    write_image(base / "train" / "person5.png")
    with pytest.raises(DatasetError, match=r"person5\.png.*regex.*e\.g\. '094_1_c9_015923\.png'"):
        build_dataset("ltcc", base)


def test_empty_split(tmp_path: Path) -> None:
    base = make_ltcc(tmp_path)
    for path in (base / "query").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="query split is empty.*query"):
        build_dataset("ltcc", base)


def test_query_pid_absent_from_gallery(tmp_path: Path) -> None:
    base = make_ltcc(tmp_path)
    write_image(base / "query" / "050_1_c1_000099.png")
    with pytest.raises(DatasetError, match="050_1_c1_000099.png.*pid 50"):
        build_dataset("ltcc", base)


def test_non_image_file_is_an_error_os_junk_is_counted(tmp_path: Path) -> None:
    base = make_ltcc(tmp_path)
    (base / "train" / "Thumbs.db").write_bytes(b"x")
    splits = build_dataset("synthetic", base)
    assert any("skipped 1 non-image" in w for w in splits.meta["warnings"])
    (base / "train" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="notes.txt.*not an image"):
        build_dataset("synthetic", base)


def test_ltcc_bad_info_line_names_line(tmp_path: Path) -> None:
    base = make_ltcc(tmp_path)
    (base / "info" / "cloth-change_id_test.txt").write_text("10\nten\n")
    with pytest.raises(DatasetError, match="cloth-change_id_test.txt' line 2"):
        build_dataset("ltcc", base)


def test_ltcc_camera_and_pid_ranges(tmp_path: Path) -> None:
    base = make_ltcc(tmp_path)
    write_image(base / "train" / "005_1_c13_000009.png")
    with pytest.raises(DatasetError, match="c13"):
        build_dataset("ltcc", base)
    build_dataset("synthetic", base)  # the synthetic set may have more cameras


def test_unknown_dataset_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ltcc.*prcc|expected one of"):
        build_dataset("ltcd", tmp_path)
    assert {"synthetic", "ltcc", "prcc", "vcclothes", "celebreid", "celebreidlight", "deepchange", "market1501"} <= set(DATASETS.names())


# ------------------------------------------------------------------------------------ PRCC


def make_prcc(root: Path) -> Path:
    rgb = root / "prcc" / "rgb"
    write_images(rgb / "train" / "001", ["A_cropped_rgb001.jpg", "B_cropped_rgb002.jpg", "C_cropped_rgb003.jpg"])
    write_images(rgb / "train" / "004", ["A_cropped_rgb001.jpg", "C_cropped_rgb009.jpg"])
    for letter in "ABC":
        for pid in ("002", "003"):
            write_images(rgb / "test" / letter / pid, [f"{letter}_cropped_rgb010.jpg", f"{letter}_cropped_rgb011.jpg"])
    return root / "prcc"


def test_prcc_records(tmp_path: Path) -> None:
    base = make_prcc(tmp_path)
    splits = build_dataset("prcc", tmp_path)
    assert splits.root == base
    assert [(r.pid, r.camid, r.clothes_id) for r in splits.train] == [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 0, 2), (1, 2, 3)]
    assert {r.camid for r in splits.gallery} == {0} and len(splits.gallery) == 4
    assert [r.camid for r in splits.query] == [1, 1, 1, 1, 2, 2, 2, 2]  # test/B then test/C
    by_key = {(r.pid, r.camid): r.clothes_id for r in splits.query + splits.gallery}
    assert by_key[(2, 0)] == by_key[(2, 1)] != by_key[(2, 2)]  # A and B share clothes, C differs
    assert min(by_key.values()) == 4  # offset past the 4 train clothes
    assert splits.protocols == ("prcc_cc_single_shot", "prcc_cc", "prcc_sc")


def test_prcc_bad_pid_folder_and_name(tmp_path: Path) -> None:
    base = make_prcc(tmp_path)
    write_image(base / "rgb" / "train" / "x01" / "A_1.jpg")
    with pytest.raises(DatasetError, match="x01.*expected digits"):
        build_dataset("prcc", base)
    (base / "rgb" / "train" / "x01" / "A_1.jpg").unlink()
    (base / "rgb" / "train" / "x01").rmdir()
    write_image(base / "rgb" / "train" / "001" / "D_cropped.jpg")
    with pytest.raises(DatasetError, match="D_cropped.jpg"):
        build_dataset("prcc", base)


# ------------------------------------------------------------------------------ VC-Clothes


def test_vcclothes_records(tmp_path: Path) -> None:
    base = tmp_path / "VC-Clothes"
    write_images(base / "train", ["0002-01-01-0001.jpg", "0001-02-03-0002.jpg"])
    write_images(base / "query", ["0300-03-01-0001.jpg"])
    write_images(base / "gallery", ["0300-04-02-0003.jpg", "0300-02-01-0004.jpg"])
    splits = build_dataset("vcclothes", tmp_path)
    assert [(r.pid, r.camid) for r in splits.train] == [(0, 1), (1, 0)]
    assert [r.camid for r in splits.gallery] == [1, 3]
    assert splits.query[0].clothes_id == splits.gallery[0].clothes_id != splits.gallery[1].clothes_id
    assert "vcclothes_cc" in splits.protocols
    write_image(base / "gallery" / "0300-05-02-0003.jpg")
    with pytest.raises(DatasetError, match="camera 5"):
        build_dataset("vcclothes", base)


# ------------------------------------------------------------------------------ Celeb-reID


@pytest.mark.parametrize("name,folder", [("celebreid", "Celeb-reID"), ("celebreidlight", "Celeb-reID-light")])
def test_celeb_records(tmp_path: Path, name: str, folder: str) -> None:
    base = tmp_path / "1_2" / folder  # a folder name that a full-path regex would match
    write_images(base / "train", ["3_1_0.jpg", "1_2_0.jpg", "1_7_1.jpg"])
    write_images(base / "query", ["1_1_0.jpg"])
    write_images(base / "gallery", ["1_2_0.jpg", "1_3_1.jpg"])
    splits = build_dataset(name, tmp_path / "1_2")
    assert [(r.pid, r.clothes_id, r.camid) for r in splits.train] == [(0, -1, 0), (0, -1, 0), (1, -1, 0)]
    assert [(r.pid, r.clothes_id, r.camid) for r in splits.query] == [(1, 0, 0)]
    assert {(r.clothes_id, r.camid) for r in splits.gallery} == {(1, 1)}
    assert splits.protocols[0] == "standard"


# ------------------------------------------------------------------------------ DeepChange


def make_deepchange(root: Path) -> Path:
    base = root / "DeepChangeDataset"
    lists = {
        "train-set": [("P00005_C01_20190101_100000_0001.jpg", 3), ("P00002_C02_20190101_100000_0001.jpg", 4),
                      ("P00002_C02_20190301_100000_0002.jpg", 5)],
        "val-set-query": [("P00100_C03_20190101_100000_0001.jpg", 7)],
        "val-set-gallery": [("P00100_C03_20190101_110000_0001.jpg", 8)],
        "test-set-query": [("P00200_C04_20190101_100000_0001.jpg", 11)],
        "test-set-gallery": [("P00200_C04_20190101_120000_0001.jpg", 12), ("P00200_C05_20190202_120000_0001.jpg", 13)],
    }
    for folder, entries in lists.items():
        write_images(base / folder, [n for n, _ in entries])
        (base / f"{folder}-bbox.txt").write_text("".join(f"{n},{t}\n" for n, t in entries))
    return base


def test_deepchange_records(tmp_path: Path) -> None:
    base = make_deepchange(tmp_path)
    splits = build_dataset("deepchange", tmp_path)
    assert [(r.path.name[:6], r.pid, r.camid) for r in splits.train] == [("P00002", 0, 4), ("P00002", 0, 5), ("P00005", 1, 3)]
    assert [r.clothes_id for r in splits.train] == [0, 1, 2]  # (2, day1) (2, day2) (5, day1)
    assert [r.camid for r in splits.gallery] == [12, 13]  # camid := tracklet id
    assert splits.gallery[0].clothes_id == splits.query[0].clothes_id != splits.gallery[1].clothes_id
    val = build_dataset("deepchange_val", base)
    assert [r.pid for r in val.query] == [100]


def test_deepchange_list_problems(tmp_path: Path) -> None:
    base = make_deepchange(tmp_path)
    (base / "test-set-gallery" / "P00200_C05_20190202_120000_0001.jpg").unlink()
    splits = build_dataset("deepchange", base)
    assert any("not in" in w and "dropped" in w for w in splits.meta["warnings"])
    (base / "train-set-bbox.txt").write_text("P00005_C01_20190101_100000_0001.jpg 3\n")
    with pytest.raises(DatasetError, match="train-set-bbox.txt' line 1.*<file name>,<tracklet id>"):
        build_dataset("deepchange", base)


# ---------------------------------------------------------------------------- Market-1501


def test_market_drops_junk_keeps_distractors(tmp_path: Path) -> None:
    base = tmp_path / "Market-1501-v15.09.15"
    write_images(base / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "0007_c2s3_070952_01.jpg"])
    write_images(base / "query", ["0010_c1s1_001051_00.jpg"])
    write_images(base / "bounding_box_test", ["-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg", "0010_c2s1_001051_02.jpg"])
    (base / "bounding_box_test" / "Thumbs.db").write_bytes(b"x")
    splits = build_dataset("market1501", tmp_path)
    assert [r.pid for r in splits.gallery] == [0, 10]
    assert [(r.pid, r.camid) for r in splits.train] == [(0, 0), (1, 1)]
    assert any("pid -1" in w for w in splits.meta["warnings"])
    assert any("Thumbs.db" in w for w in splits.meta["warnings"])
    assert splits.protocols == ("standard",)


# ---------------------------------------------------------------- name grammars round-trip

SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(st.integers(0, 151), st.integers(0, 14), st.integers(1, 12), st.integers(0, 999999))
def test_ltcc_name_roundtrip(pid: int, outfit: int, cam: int, frame: int) -> None:
    assert ltcc.parse_name(f"{pid:03d}_{outfit}_c{cam}_{frame:06d}.png") == (pid, outfit, cam)


@SETTINGS
@given(st.integers(0, 9999), st.integers(1, 4), st.integers(0, 99), st.integers(0, 9999))
def test_vcclothes_name_roundtrip(pid: int, cam: int, outfit: int, frame: int) -> None:
    assert vcclothes.parse_name(f"{pid:04d}-{cam:02d}-{outfit:02d}-{frame:04d}.jpg") == (pid, cam, outfit, frame)


@SETTINGS
@given(st.integers(0, 2000), st.integers(0, 500), st.from_regex(r"[A-Za-z0-9]{1,4}", fullmatch=True))
def test_celeb_name_roundtrip(pid: int, index: int, z: str) -> None:
    assert celebreid.parse_name(f"{pid}_{index}_{z}.jpg") == (pid, index, z)


@SETTINGS
@given(st.integers(0, 99999), st.integers(1, 17), st.from_regex(r"[0-9]{8}", fullmatch=True), st.sampled_from(["jpg", "png"]))
def test_deepchange_name_roundtrip(pid: int, cam: int, day: str, ext: str) -> None:
    assert deepchange.parse_name(f"P{pid:05d}_C{cam:02d}_{day}_101010_0001.{ext}") == (pid, cam, day)


@SETTINGS
@given(st.integers(-1, 1501), st.integers(1, 6), st.integers(1, 6), st.integers(0, 999999), st.integers(0, 99))
def test_market_name_roundtrip(pid: int, cam: int, seq: int, frame: int, box: int) -> None:
    text = "-1" if pid == -1 else f"{pid:04d}"
    assert market1501.parse_name(f"{text}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg") == (pid, cam)


@SETTINGS
@given(st.sampled_from("ABC"), st.integers(0, 999))
def test_prcc_camera_roundtrip(letter: str, index: int) -> None:
    assert prcc.camera_of(Path(f"{letter}_cropped_rgb{index:03d}.jpg")) == "ABC".index(letter)


def test_parsers_reject_outside_grammar() -> None:
    for parse, name in [(ltcc.parse_name, "094_1_9_015923.png"), (vcclothes.parse_name, "0001-01-01.jpg"),
                        (celebreid.parse_name, "1-2-3.jpg"), (deepchange.parse_name, "00001_C01_x_y.jpg"),
                        (market1501.parse_name, "0002_c1_000451_03.jpg")]:
        with pytest.raises(DatasetError, match="e.g."):
            parse(name)
