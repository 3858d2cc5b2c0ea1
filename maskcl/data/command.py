"""``maskcl data``: index and validate the configured dataset (the DVC ``data`` stage).

Loading runs every check of the dataset's loader (layout, file-name grammar, empty splits, query
ids missing from the gallery, published counts) and reads the header and end of every image of
every split (:mod:`maskcl.data.integrity`), so a malformed download fails here, in seconds,
with the file named, instead of hours later inside training. The summary it writes (counts per
split, protocols, count warnings) is a DVC metrics file, so ``dvc metrics show`` tells which data
a run saw.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from maskcl.cli import add_config_args

    parser = subparsers.add_parser(
        "data",
        help="index and validate dataset.root with its loader; write a summary",
        description="Reads dataset.name and dataset.root from params.yaml (or --set).",
    )
    add_config_args(parser)
    parser.add_argument("--summary", type=Path, default=Path("results/data.json"), help="summary JSON to write")
    parser.set_defaults(func=run)


def summarize(splits) -> dict:
    """Counts per split, the protocols and the loader's warnings, as plain JSON values."""

    def stats(records) -> dict:
        return {
            "images": len(records),
            "ids": len({r.pid for r in records}),
            "cameras": len({r.camid for r in records}),
            "clothes": len({r.clothes_id for r in records if r.clothes_id >= 0}),
        }

    return {
        "dataset": splits.name,
        "root": str(splits.root),
        "protocols": list(splits.protocols),
        "splits": {name: stats(getattr(splits, name)) for name in ("train", "query", "gallery")},
        "warnings": [str(w) for w in splits.meta.get("warnings", [])],
    }


def run(args: argparse.Namespace) -> int:
    from maskcl.atomic import write_text_atomic
    from maskcl.cli import config_from_args
    from maskcl.data import build_dataset
    from maskcl.data.integrity import check_split_images

    config = config_from_args(args)
    splits = build_dataset(config.dataset.name, config.dataset.root)
    check_split_images(splits)  # headers and end markers of every image of every split
    summary = summarize(splits)
    write_text_atomic(args.summary, json.dumps(summary, indent=2) + "\n", "summary file")
    for warning in summary["warnings"]:
        log.warning("%s: %s", splits.name, warning)
    log.info("%s at %s is valid; summary in %s", splits.name, splits.root, args.summary)
    return 0
