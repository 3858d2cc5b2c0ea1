"""Market-1501 (Zheng et al., ICCV 2015): the short-term (same-clothes) control.

Layout: ``Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/PPPP_cCsS_FFFFFF_NN.jpg``
(pid, camera 1..6, sequence, frame, box). pid −1 files are junk and dropped at load time
(counted, 3,819 in the release's gallery); pid 0 files are distractors and stay in the gallery
only. The release ships ``Thumbs.db`` files, which are counted and skipped. One outfit per
person (clothes key ``(pid, 0)``), so only the ``standard`` rule applies (MaskCL's own Market
setup makes every match fail its CC rule, datasets.md §8).
"""

from __future__ import annotations

import logging
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

GRAMMAR = Grammar(re.compile(r"(-1|\d+)_c(\d)s(\d+)_(\d+)_(\d+)\.jpg"), "0002_c1s1_000451_03.jpg")
ALIASES = ("Market-1501-v15.09.15", "Market-1501", "market1501")
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
LAYOUT = "Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/PPPP_cCsS_FFFFFF_NN.jpg"
COUNTS = {"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)}
JUNK_IN_GALLERY = 3819
N_CAMERAS = 6

logger = logging.getLogger(__name__)


def parse_name(name: str) -> tuple[int, int]:
    """``(pid, camera 1-based)`` of a Market-1501 basename (pid may be −1)."""
    found = GRAMMAR.match(Path(name), "market1501")
    return int(found.group(1)), int(found.group(2))


@DATASETS.register("market1501")
def load_market1501(root: Path) -> DatasetSplits:
    name = "market1501"
    log = LoadLog(name)
    root = resolve_root(root, name, tuple(FOLDERS.values()), ALIASES, LAYOUT)
    parsed: dict[str, list[tuple[Path, int, int]]] = {}
    for split, folder in FOLDERS.items():
        rows, junk, distractors = [], 0, 0
        for path in list_images(root / folder, log):
            found = GRAMMAR.match(path, name)
            pid, cam = int(found.group(1)), int(found.group(2))
            if not 1 <= cam <= N_CAMERAS:
                raise DatasetError(f"{name}: '{path}' has camera c{cam}; expected c1..c{N_CAMERAS}")
            if pid == -1:
                junk += 1
            elif pid == 0 and split != "gallery":
                distractors += 1
            else:
                rows.append((path, pid, cam))
        if junk:
            expected = f" (the release has {JUNK_IN_GALLERY})" if split == "gallery" else ""
            message = f"{folder}: dropped {junk} junk image(s) of pid -1{expected}"
            if split == "gallery" and junk == JUNK_IN_GALLERY:
                logger.info("%s: %s", name, message)  # exactly the release's junk: expected
            else:
                log.warn(message)
        if distractors:
            log.warn(f"{folder}: dropped {distractors} distractor image(s) of pid 0 (kept in the gallery only)")
        parsed[split] = rows
    train_clothes = clothes_map((pid, 0) for _, pid, _ in parsed["train"])
    test_clothes = clothes_map(((pid, 0) for s in ("query", "gallery") for _, pid, _ in parsed[s]), offset=len(train_clothes))
    train = relabel([Record(p, pid, train_clothes[(pid, 0)], cam - 1) for p, pid, cam in parsed["train"]])
    query = [Record(p, pid, test_clothes[(pid, 0)], cam - 1) for p, pid, cam in parsed["query"]]
    gallery = [Record(p, pid, test_clothes[(pid, 0)], cam - 1) for p, pid, cam in parsed["gallery"]]
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        require_nonempty(records, log, split, root / FOLDERS[split])
    check_query_in_gallery(query, gallery, log, root / FOLDERS["gallery"])
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        check_count(log, split, records, COUNTS[split])
    summary(name, train, query, gallery)
    meta = {
        "train_raw_pids": sorted({pid for _, pid, _ in parsed["train"]}),
        "n_train_clothes": len(train_clothes),
        "warnings": log.warnings,
    }
    return DatasetSplits(name, root, train, query, gallery, ("standard",), meta)
