"""Celeb-reID and Celeb-reID-light (Huang et al., 2019).

Layout (datasets.md §6): ``Celeb-reID[-light]/{train,query,gallery}/x_y_z.jpg``: x = person id,
y = index of the image within the person, z = meaningless (maintainer, Celeb-reID issue #1).
There are **no camera and no clothes labels**. Train records get camera 0 and clothes −1
(unknown); following MaskCL, query records get (clothes 0, camera 0) and gallery records
(clothes 1, camera 1), so every same-pid gallery image is a true match under ``standard`` and
under ``cc`` alike (both listed; ``standard`` is the default). Test pids reuse the train
number range, so pid namespaces are kept per split and never merged.
"""

from __future__ import annotations

import re
from pathlib import Path

from maskcl.data.datasets.common import (
    Grammar,
    LoadLog,
    check_count,
    check_query_in_gallery,
    list_images,
    require_nonempty,
    resolve_root,
    summary,
)
from maskcl.data.records import DatasetSplits, Record, relabel
from maskcl.data.registry import DATASETS

GRAMMAR = Grammar(re.compile(r"(\d+)_(\d+)_(\w+)\.jpg"), "1_12_0.jpg")
SPLITS = ("train", "query", "gallery")
VARIANTS = {
    "celebreid": (("Celeb-reID", "celebreid", "Celeb-ReID"), {"train": (632, 20208), "query": (420, 2972), "gallery": (420, 11006)}),
    "celebreidlight": (
        ("Celeb-reID-light", "celebreidlight", "Celeb-ReID-light"),
        {"train": (490, 9021), "query": (100, 887), "gallery": (100, 934)},
    ),
}
UNKNOWN_CLOTHES = -1


def parse_name(name: str) -> tuple[int, int, str]:
    """``(pid, image index, z)`` of a Celeb-reID basename."""
    found = GRAMMAR.match(Path(name), "celebreid")
    return int(found.group(1)), int(found.group(2)), found.group(3)


def load_celeb(root: Path, name: str) -> DatasetSplits:
    aliases, counts = VARIANTS[name]
    log = LoadLog(name)
    root = resolve_root(root, name, SPLITS, aliases, f"{aliases[0]}/{{train,query,gallery}}/x_y_z.jpg")
    pids = {split: [(path, int(GRAMMAR.match(path, name).group(1))) for path in list_images(root / split, log)] for split in SPLITS}
    train = relabel([Record(p, pid, UNKNOWN_CLOTHES, 0) for p, pid in pids["train"]])
    query = [Record(p, pid, 0, 0) for p, pid in pids["query"]]
    gallery = [Record(p, pid, 1, 1) for p, pid in pids["gallery"]]
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        require_nonempty(records, log, split, root / split)
    check_query_in_gallery(query, gallery, log, root / "gallery")
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        check_count(log, split, records, counts[split])
    summary(name, train, query, gallery)
    meta = {
        "train_raw_pids": sorted({pid for _, pid in pids["train"]}),
        "has_cameras": False,
        "has_clothes": False,
        "warnings": log.warnings,
    }
    return DatasetSplits(name, root, train, query, gallery, ("standard", "cc"), meta)


@DATASETS.register("celebreid")
def load_celebreid(root: Path) -> DatasetSplits:
    return load_celeb(root, "celebreid")


@DATASETS.register("celebreidlight")
def load_celebreidlight(root: Path) -> DatasetSplits:
    return load_celeb(root, "celebreidlight")
