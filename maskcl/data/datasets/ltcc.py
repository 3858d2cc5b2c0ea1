"""LTCC (Qian et al., ACCV 2020) and the synthetic dataset, which writes the same layout.

Layout (datasets.md §3)::

    LTCC_ReID/train/*.png  query/*.png  test/*.png          (test = the gallery)
    LTCC_ReID/info/cloth-change_id_{train,test}.txt  cloth-unchange_id_{train,test}.txt

Names ``PPP_O_cCC_FFFFFF.png``: pid, outfit index within the person, camera 1..12, frame. The
clothes key is ``(pid, outfit)``. All 77 train / 75 test ids are kept (CAL); the 45 cloth-change
test ids from ``info/`` go to ``meta["cc_test_ids"]`` for MaskCL's protocol (``ltcc_cc_maskcl``).
Default protocol for ``ltcc``: ``ltcc_cc_maskcl`` (the setting MaskCL's LTCC numbers use), then
CAL's ``cc``/``standard``/``sc`` over all 75 ids. ``synthetic`` is the same reader without the
real-count checks, defaulting to ``cc`` (DESIGN §5).
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
    require_nonempty,
    resolve_root,
    summary,
)
from maskcl.data.records import DatasetSplits, Record, relabel
from maskcl.data.registry import DATASETS
from maskcl.errors import DatasetError

GRAMMAR = Grammar(re.compile(r"(\d+)_(\d+)_c(\d+)_.*\.png"), "094_1_c9_015923.png")
ALIASES = ("LTCC_ReID", "LTCC-reID", "ltcc")
FOLDERS = {"train": "train", "query": "query", "gallery": "test"}
INFO_FILES = {
    "cc_train_ids": "cloth-change_id_train.txt",
    "unchange_train_ids": "cloth-unchange_id_train.txt",
    "cc_test_ids": "cloth-change_id_test.txt",
    "unchange_test_ids": "cloth-unchange_id_test.txt",
}
LAYOUT = (
    "LTCC_ReID/{train,query,test}/PPP_O_cCC_FFFFFF.png and LTCC_ReID/info/{"
    + ",".join(INFO_FILES.values())
    + "}"
)
# datasets.md §1: (ids, images)
COUNTS = {"train": (77, 9576), "query": (75, 493), "gallery": (75, 7050)}
INFO_COUNTS = {"cc_train_ids": 46, "unchange_train_ids": 31, "cc_test_ids": 45, "unchange_test_ids": 30}
MAX_PID, MAX_CAM = 151, 12


def parse_name(name: str) -> tuple[int, int, int]:
    """``(pid, outfit, camera 1-based)`` of an LTCC basename; raises DatasetError outside the grammar."""
    found = GRAMMAR.match(Path(name), "ltcc")
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def read_id_file(path: Path, dataset: str) -> list[int]:
    """One pid per line; tolerant of blank lines, surrounding space and commas (copies differ)."""
    if not path.is_file():
        raise DatasetError(f"{dataset}: id list '{path}' is missing; expected one person id per line")
    ids: list[int] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip().replace(",", "")
        if not text:
            continue
        try:
            ids.append(int(text))
        except ValueError:
            raise DatasetError(
                f"{dataset}: '{path}' line {number}: found {line.strip()!r}; expected one integer person id per line"
            ) from None
    return sorted(set(ids))


def load_ltcc_layout(root: Path, name: str, real: bool) -> DatasetSplits:
    """Read an LTCC-layout folder; ``real`` turns on the published-count and range checks."""
    log = LoadLog(name)
    root = resolve_root(root, name, ("train", "query", "test", "info"), ALIASES, LAYOUT)
    info = {key: read_id_file(root / "info" / file, name) for key, file in INFO_FILES.items()}

    parsed: dict[str, list[tuple[Path, int, int, int]]] = {}
    for split, folder in FOLDERS.items():
        rows = []
        for path in list_images(root / folder, log):
            found = GRAMMAR.match(path, name)
            pid, outfit, cam = int(found.group(1)), int(found.group(2)), int(found.group(3))
            if cam < 1 or (real and cam > MAX_CAM):
                raise DatasetError(
                    f"{name}: '{path}' has camera c{cam}; expected c1..c{MAX_CAM if real else 'N'} (cameras count from 1)"
                )
            if real and pid > MAX_PID:
                raise DatasetError(f"{name}: '{path}' has pid {pid}; expected 0..{MAX_PID}")
            rows.append((path, pid, outfit, cam))
        parsed[split] = rows

    train_clothes = clothes_map((pid, outfit) for _, pid, outfit, _ in parsed["train"])
    test_clothes = clothes_map(
        ((pid, outfit) for split in ("query", "gallery") for _, pid, outfit, _ in parsed[split]),
        offset=len(train_clothes),
    )
    train = relabel([Record(p, pid, train_clothes[(pid, o)], cam - 1) for p, pid, o, cam in parsed["train"]])
    query = [Record(p, pid, test_clothes[(pid, o)], cam - 1) for p, pid, o, cam in parsed["query"]]
    gallery = [Record(p, pid, test_clothes[(pid, o)], cam - 1) for p, pid, o, cam in parsed["gallery"]]
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        require_nonempty(records, log, split, root / FOLDERS[split])
    check_query_in_gallery(query, gallery, log, root / "test")

    train_pids = sorted({pid for _, pid, _, _ in parsed["train"]})
    test_pids = sorted({r.pid for r in query} | {r.pid for r in gallery})
    _check_info(log, info, "train", train_pids, root)
    _check_info(log, info, "test", test_pids, root)
    if real:
        for split, records in (("train", train), ("query", query), ("gallery", gallery)):
            check_count(log, split, records, COUNTS[split])
        for key, expected in INFO_COUNTS.items():
            if len(info[key]) != expected:
                log.warn(f"info/{INFO_FILES[key]}: {len(info[key])} ids, the release lists {expected}")
    summary(name, train, query, gallery)
    meta = {
        **info,
        "train_raw_pids": train_pids,  # index = relabelled train pid
        "n_train_clothes": len(train_clothes),
        "warnings": log.warnings,
    }
    protocols = ("ltcc_cc_maskcl", "cc", "standard", "sc") if real else ("cc", "standard", "sc", "ltcc_cc_maskcl")
    return DatasetSplits(name, root, train, query, gallery, protocols, meta)


def _check_info(log: LoadLog, info: dict[str, list[int]], split: str, pids: list[int], root: Path) -> None:
    change, unchange = set(info[f"cc_{split}_ids"]), set(info[f"unchange_{split}_ids"])
    if change & unchange:
        log.warn(f"info: ids {sorted(change & unchange)[:10]} are listed as both cloth-change and cloth-unchange ({split})")
    listed = change | unchange
    if listed != set(pids):
        log.warn(
            f"info/*_{split}.txt list {len(listed)} ids, the {split} images in '{root}' have {len(pids)} "
            f"({len(listed - set(pids))} listed without images, {len(set(pids) - listed)} with images but unlisted)"
        )


@DATASETS.register("ltcc")
def load_ltcc(root: Path) -> DatasetSplits:
    return load_ltcc_layout(root, "ltcc", real=True)


@DATASETS.register("synthetic")
def load_synthetic(root: Path) -> DatasetSplits:
    return load_ltcc_layout(root, "synthetic", real=False)
