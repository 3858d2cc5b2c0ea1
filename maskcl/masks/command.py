"""``maskcl masks``: one silhouette mask per dataset image (values from params.yaml ``masks``).

Examples::

    maskcl masks                                   # params.yaml: synthetic ground truth → silhouettes
    maskcl masks --source schp --checkpoint exp-schp-201908261155-lip.pth --set dataset.name=ltcc \\
        --set dataset.root=data/LTCC_ReID --set dataset.mask_root=generated/masks/ltcc
    maskcl masks --source import --parsing-dir data/ltcc_parsing --mode parsing_grey --force

Masks already present are skipped (resume) unless ``--force``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# CLI option → masks.<key> it overrides
OVERRIDES = {
    "source": "source",
    "mode": "mode",
    "label_set": "label_set",
    "parsing_dir": "parsing_dir",
    "checkpoint": "checkpoint",
    "flip": "flip",
    "batch_size": "batch_size",
    "device": "device",
    "atr_bag": "atr_bag",
    "drop_accessories": "drop_accessories",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from maskcl.cli import add_config_args

    parser = subparsers.add_parser(
        "masks",
        help="make a silhouette mask per image (SCHP, imported parsing PNGs, or synthetic ground truth)",
        description=(
            "Options override the masks group of params.yaml; "
            "the dataset comes from dataset.{name,root,mask_root}."
        ),
    )
    add_config_args(parser)
    parser.add_argument(
        "--source", choices=("ground_truth", "import", "schp"), default=None,
        help=(
            "ground_truth: synthetic parsing (default <dataset.root>/../parsing); "
            "import: --parsing-dir; schp: --checkpoint"
        ),
    )
    parser.add_argument(
        "--mode", choices=("silhouette", "no_clothes", "parsing_grey"), default=None,
        help=(
            "silhouette: person 255; no_clothes: person minus clothes; "
            "parsing_grey: the authors' per-class grey levels"
        ),
    )
    parser.add_argument(
        "--label-set",
        dest="label_set",
        choices=("lip", "atr", "pascal"),
        default=None,
        help="label ids of the parsing maps",
    )
    parser.add_argument(
        "--parsing-dir", dest="parsing_dir", default=None, help="folder of SCHP parsing PNGs mirroring the images"
    )
    parser.add_argument("--checkpoint", default=None, help="official SCHP .pth (source schp)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="SCHP flip test")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="SCHP images per forward pass")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=None, help="SCHP device (auto: CUDA if present)"
    )
    parser.add_argument(
        "--splits", default="train,query,gallery", help="comma-separated splits to mask (MaskCL reads train masks only)"
    )
    parser.add_argument(
        "--atr-bag", dest="atr_bag", action=argparse.BooleanOptionalAction, default=None, help="ATR: Bag counts as person"
    )
    parser.add_argument(
        "--drop-accessories",
        dest="drop_accessories",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="no_clothes: also remove hats, shoes, scarves, gloves …",
    )
    parser.add_argument("--parsing-out", type=Path, default=None, help="source schp: also keep SCHP parsing PNGs here")
    parser.add_argument("--force", action="store_true", help="remake masks that already exist")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maskcl.cli import config_from_args
    from maskcl.masks.generate import generate_for_config

    config = config_from_args(args)
    overrides = {f"masks.{key}": getattr(args, opt) for opt, key in OVERRIDES.items() if getattr(args, opt) is not None}
    if overrides:
        config = config.replace(**overrides)  # validates: a bad value fails naming the key
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    summary = generate_for_config(
        config,
        force=args.force,
        splits=splits,
        atr_bag=config.masks.atr_bag,
        drop_accessories=config.masks.drop_accessories,
        parsing_out=args.parsing_out,
        progress=not args.no_progress,
    )
    log.info("%d mask(s) in place under %s", summary.made + summary.skipped, config.dataset.mask_root)
    return 0
