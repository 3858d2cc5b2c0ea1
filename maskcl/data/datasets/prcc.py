"""PRCC (Yang et al., TPAMI 2019).

Layout (datasets.md §4)::

    prcc/rgb/train/<pid>/<X>*.jpg        X = camera letter: A, B (same clothes as A), C (changed)
    prcc/rgb/test/{A,B,C}/<pid>/*.jpg    (rgb/val and sketch/ are not read)

pid = the folder name; camera A/B/C → 0/1/2 (train: the file name's first letter; test: the
folder, since the real test files are ``rgb/test/{A,B,C}/<pid>/cropped_rgbNNN.jpg`` with no camera
letter in the name, so no file-name pattern is applied there). Clothes per CAL's reading: A and B share ``(pid, 0)``, C is ``(pid, 1)``. Query =
test/B ∪ test/C, gallery = test/A. Protocols: ``prcc_cc_single_shot`` (MaskCL's code and the
original paper: C vs one random A image per pid, mean of seeded trials) first, then CAL's
multi-shot ``prcc_cc`` (C vs all of A) and ``prcc_sc`` (B vs all of A).
"""

from __future__ import annotations

import re
from pathlib import Path

from maskcl.data.datasets.common import (
    Grammar,
    LoadLog,
    check_count,
    check_query_in_gallery,
    clothes_map,
    list_images,
    list_subdirs,
    require_nonempty,
    resolve_root,
    summary,
)
from maskcl.data.records import DatasetSplits, Record, relabel
from maskcl.data.registry import DATASETS
from maskcl.errors import DatasetError

GRAMMAR = Grammar(re.compile(r"([ABC]).*\.(?:jpg|jpeg|png)", re.IGNORECASE), "A_cropped_rgb001.jpg")
CAMERAS = {"A": 0, "B": 1, "C": 2}
ALIASES = ("prcc", "PRCC")
REQUIRED = ("rgb/train", "rgb/test/A", "rgb/test/B", "rgb/test/C")
LAYOUT = "prcc/rgb/train/<pid>/{A,B,C}*.jpg and prcc/rgb/test/{A,B,C}/<pid>/*.jpg"
# datasets.md §1: (ids, images); the B/C split is [verify]
COUNTS = {"train": (150, 17896), "query B": (71, 3873), "query C": (71, 3543), "gallery": (71, 3384)}


def parse_pid(folder: Path, dataset: str = "prcc") -> int:
    if not folder.name.isdigit():
        raise DatasetError(f"{dataset}: folder '{folder}' is not a person id; expected digits, e.g. '001'")
    return int(folder.name)


def camera_of(path: Path, dataset: str = "prcc") -> int:
    """Camera 0/1/2 from the basename's first letter A/B/C."""
    return CAMERAS[GRAMMAR.match(path, dataset).group(1).upper()]


def _walk(split_dir: Path, log: LoadLog, camera: int | None = None) -> list[tuple[Path, int, int]]:
    """``(path, pid, camera)`` of ``split_dir/<pid>/*`` in sorted order.

    ``camera=None`` (train) reads it from each file name's first letter; a test folder passes its
    own camera, and its file names are not parsed at all.
    """
    rows = []
    for pid_dir in list_subdirs(split_dir, log, "person-id"):
        pid = parse_pid(pid_dir, log.dataset)
        rows.extend(
            (path, pid, camera_of(path, log.dataset) if camera is None else camera)
            for path in list_images(pid_dir, log)
        )
    return rows


@DATASETS.register("prcc")
def load_prcc(root: Path) -> DatasetSplits:
    name = "prcc"
    log = LoadLog(name)
    root = resolve_root(root, name, REQUIRED, ALIASES, LAYOUT)
    rgb = root / "rgb"

    train_rows = _walk(rgb / "train", log)
    train_clothes = clothes_map((pid, int(cam == 2)) for _, pid, cam in train_rows)
    train = relabel([Record(p, pid, train_clothes[(pid, int(cam == 2))], cam) for p, pid, cam in train_rows])

    test_rows: dict[str, list[tuple[Path, int, int]]] = {}
    for letter, cam in CAMERAS.items():
        test_rows[letter] = _walk(rgb / "test" / letter, log, camera=cam)
    test_clothes = clothes_map(
        ((pid, int(cam == 2)) for rows in test_rows.values() for _, pid, cam in rows), offset=len(train_clothes)
    )

    def records(letter: str) -> list[Record]:
        return [Record(p, pid, test_clothes[(pid, int(cam == 2))], cam) for p, pid, cam in test_rows[letter]]

    query_b, query_c, gallery = records("B"), records("C"), records("A")
    require_nonempty(train, log, "train", rgb / "train")
    require_nonempty(query_b + query_c, log, "query", rgb / "test" / "{B,C}")
    require_nonempty(gallery, log, "gallery", rgb / "test" / "A")
    query = query_b + query_c
    check_query_in_gallery(query, gallery, log, rgb / "test" / "A")
    for split, recs in (("train", train), ("query B", query_b), ("query C", query_c), ("gallery", gallery)):
        check_count(log, split, recs, COUNTS[split])
    summary(name, train, query, gallery)
    meta = {
        "cameras": dict(CAMERAS),
        "train_raw_pids": sorted({pid for _, pid, _ in train_rows}),
        "n_train_clothes": len(train_clothes),
        "warnings": log.warnings,
    }
    return DatasetSplits(name, root, train, query, gallery, ("prcc_cc_single_shot", "prcc_cc", "prcc_sc"), meta)
