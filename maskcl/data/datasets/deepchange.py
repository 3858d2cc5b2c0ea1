"""DeepChange (Xu et al., 2021): long-term re-ID with natural clothes changes.

Layout (datasets.md §7)::

    DeepChangeDataset/train-set/          train-set-bbox.txt
    DeepChangeDataset/val-set-{query,gallery}/   val-set-{query,gallery}-bbox.txt
    DeepChangeDataset/test-set-{query,gallery}/  test-set-{query,gallery}-bbox.txt

Each list line is ``<file name>,<tracklet id>``; names are ``P<pid>_C<camera>_<day>_…`` (the
extension is unconfirmed, so any image suffix is accepted). Following CAL (there is no MaskCL
loader): clothes key ``(pid, day)`` (same outfit within a day), and ``camid := tracklet id``, so
true matches from the same camera but another tracklet count, as in the original paper.
``deepchange`` evaluates on the test split, ``deepchange_val`` on the validation split; both
use the ``standard`` rule only. A listed file missing on disk, or a file on disk that is not
listed, is counted and warned about (a partial download stays visible, not fatal).
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

GRAMMAR = Grammar(re.compile(r"P(\d+)_C(\d+)_([^_]+)_.*\.(?:jpg|jpeg|png|bmp)", re.IGNORECASE), "P00001_C01_20190418_095722_0001.jpg")
LINE_EXAMPLE = "P00001_C01_20190418_095722_0001.jpg,123"
ALIASES = ("DeepChangeDataset", "DeepChange")
SPLITS = {
    "train": "train-set",
    "val_query": "val-set-query",
    "val_gallery": "val-set-gallery",
    "test_query": "test-set-query",
    "test_gallery": "test-set-gallery",
}
LAYOUT = "DeepChangeDataset/<split>/ and <split>-bbox.txt for " + ", ".join(SPLITS.values())
COUNTS = {  # datasets.md §1 ([verify]: the split sums check)
    "train": (450, 75083),
    "val_query": (150, 4976),
    "val_gallery": (150, 17865),
    "test_query": (521, 17527),
    "test_gallery": (521, 62956),
}


def parse_name(name: str) -> tuple[int, int, str]:
    """``(pid, camera, day)`` of a DeepChange file name."""
    found = GRAMMAR.match(Path(name), "deepchange")
    return int(found.group(1)), int(found.group(2)), found.group(3)


def read_list(path: Path, dataset: str) -> list[tuple[str, int]]:
    """``(file name, tracklet id)`` per non-blank line of a ``*-bbox.txt`` list."""
    entries: list[tuple[str, int]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        name, sep, tracklet = text.rpartition(",")
        if not sep or not name.strip() or not tracklet.strip().isdigit():
            raise DatasetError(
                f"{dataset}: '{path}' line {number}: found {text!r}; expected '<file name>,<tracklet id>', "
                f"e.g. '{LINE_EXAMPLE}'"
            )
        entries.append((Path(name.strip()).name, int(tracklet)))
    return entries


def _read_split(root: Path, split: str, log: LoadLog) -> list[tuple[Path, int, int, str]]:
    """``(path, pid, tracklet, day)`` of one split, sorted by file name, listed files only."""
    folder = root / SPLITS[split]
    entries = read_list(root / f"{SPLITS[split]}-bbox.txt", log.dataset)
    on_disk = {p.name: p for p in list_images(folder, log)}
    rows, missing, seen = [], [], set()
    for name, tracklet in sorted(entries):
        if name in seen:
            continue
        seen.add(name)
        found = GRAMMAR.match(folder / name, log.dataset)
        if name not in on_disk:
            missing.append(name)
            continue
        rows.append((on_disk[name], int(found.group(1)), tracklet, found.group(3)))
    if len(seen) != len(entries):
        log.warn(f"{SPLITS[split]}-bbox.txt lists {len(entries) - len(seen)} file name(s) more than once")
    if missing:
        log.warn(f"{len(missing)} file(s) listed in {SPLITS[split]}-bbox.txt are not in '{folder}' (e.g. '{missing[0]}'); dropped")
    unlisted = len(set(on_disk) - seen)
    if unlisted:
        log.warn(f"{unlisted} image(s) in '{folder}' are not listed in {SPLITS[split]}-bbox.txt; ignored")
    return rows


def load_deepchange(root: Path, name: str, eval_split: str) -> DatasetSplits:
    log = LoadLog(name)
    required = [folder for folder in SPLITS.values()] + [f"{folder}-bbox.txt" for folder in SPLITS.values()]
    root = resolve_root(root, name, required, ALIASES, LAYOUT)
    train_rows = _read_split(root, "train", log)
    query_rows = _read_split(root, f"{eval_split}_query", log)
    gallery_rows = _read_split(root, f"{eval_split}_gallery", log)
    train_clothes = clothes_map((pid, day) for _, pid, _, day in train_rows)
    test_clothes = clothes_map(((pid, day) for _, pid, _, day in query_rows + gallery_rows), offset=len(train_clothes))
    train = relabel([Record(p, pid, train_clothes[(pid, day)], tr) for p, pid, tr, day in train_rows])
    query = [Record(p, pid, test_clothes[(pid, day)], tr) for p, pid, tr, day in query_rows]
    gallery = [Record(p, pid, test_clothes[(pid, day)], tr) for p, pid, tr, day in gallery_rows]
    splits = (("train", "train", train), ("query", f"{eval_split}_query", query), ("gallery", f"{eval_split}_gallery", gallery))
    for split, key, records in splits:
        require_nonempty(records, log, split, root / SPLITS[key])
    check_query_in_gallery(query, gallery, log, root / SPLITS[f"{eval_split}_gallery"])
    for split, key, records in splits:
        check_count(log, key, records, COUNTS[key])
    summary(name, train, query, gallery)
    meta = {
        "eval_split": eval_split,
        "camid": "tracklet",
        "train_raw_pids": sorted({pid for _, pid, _, _ in train_rows}),
        "n_train_clothes": len(train_clothes),
        "warnings": log.warnings,
    }
    return DatasetSplits(name, root, train, query, gallery, ("standard",), meta)


@DATASETS.register("deepchange")
def load_deepchange_test(root: Path) -> DatasetSplits:
    return load_deepchange(root, "deepchange", "test")


@DATASETS.register("deepchange_val")
def load_deepchange_val(root: Path) -> DatasetSplits:
    return load_deepchange(root, "deepchange_val", "val")
