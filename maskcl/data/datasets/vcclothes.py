"""VC-Clothes (Wan et al., CVPR-W 2020; synthetic, rendered in GTA5).

Layout (datasets.md §5): ``VC-Clothes/{train,query,gallery}/PPPP-CC-OO-FFFF.jpg`` with pid,
camera 1..4, outfit and frame. Clothes key ``(pid, outfit)``; camera id = raw camera − 1.
Protocols: ``cc`` first (MaskCL: all four cameras with the clothes-changing rule, also CAL's
``all`` mode), ``standard``, ``sc``, and CAL's camera-subset protocols ``vcclothes_cc`` (raw
cameras 3 & 4, where clothes change) and ``vcclothes_sc`` (raw cameras 2 & 3, same clothes).
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

GRAMMAR = Grammar(re.compile(r"(\d+)-(\d+)-(\d+)-(\d+)\.jpg"), "0001-01-01-0001.jpg")
ALIASES = ("VC-Clothes", "vcclothes", "VC_Clothes")
SPLITS = ("train", "query", "gallery")
LAYOUT = "VC-Clothes/{train,query,gallery}/PPPP-CC-OO-FFFF.jpg"
COUNTS = {"train": (256, 9449), "query": (256, 1020), "gallery": (256, 8591)}  # [verify] in datasets.md
N_CAMERAS = 4


def parse_name(name: str) -> tuple[int, int, int, int]:
    """``(pid, camera 1-based, outfit, frame)`` of a VC-Clothes basename."""
    found = GRAMMAR.match(Path(name), "vcclothes")
    return int(found.group(1)), int(found.group(2)), int(found.group(3)), int(found.group(4))


@DATASETS.register("vcclothes")
def load_vcclothes(root: Path) -> DatasetSplits:
    name = "vcclothes"
    log = LoadLog(name)
    root = resolve_root(root, name, SPLITS, ALIASES, LAYOUT)
    parsed: dict[str, list[tuple[Path, int, int, int]]] = {}
    for split in SPLITS:
        rows = []
        for path in list_images(root / split, log):
            found = GRAMMAR.match(path, name)
            pid, cam, outfit = int(found.group(1)), int(found.group(2)), int(found.group(3))
            if not 1 <= cam <= N_CAMERAS:
                raise DatasetError(f"{name}: '{path}' has camera {cam}; expected 1..{N_CAMERAS}")
            rows.append((path, pid, cam, outfit))
        parsed[split] = rows
    train_clothes = clothes_map((pid, outfit) for _, pid, _, outfit in parsed["train"])
    test_clothes = clothes_map(
        ((pid, outfit) for split in ("query", "gallery") for _, pid, _, outfit in parsed[split]),
        offset=len(train_clothes),
    )
    train = relabel([Record(p, pid, train_clothes[(pid, o)], cam - 1) for p, pid, cam, o in parsed["train"]])
    query = [Record(p, pid, test_clothes[(pid, o)], cam - 1) for p, pid, cam, o in parsed["query"]]
    gallery = [Record(p, pid, test_clothes[(pid, o)], cam - 1) for p, pid, cam, o in parsed["gallery"]]
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        require_nonempty(records, log, split, root / split)
    check_query_in_gallery(query, gallery, log, root / "gallery")
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        check_count(log, split, records, COUNTS[split])
    summary(name, train, query, gallery)
    meta = {
        "train_raw_pids": sorted({pid for _, pid, _, _ in parsed["train"]}),
        "n_train_clothes": len(train_clothes),
        "warnings": log.warnings,
    }
    protocols = ("cc", "standard", "sc", "vcclothes_cc", "vcclothes_sc")
    return DatasetSplits(name, root, train, query, gallery, protocols, meta)
