"""``maskcl synth``: generate the synthetic clothes-changing dataset (values from params.yaml ``synth``)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

OPTIONS = ("identities", "outfits", "cameras", "images_per", "height", "width", "seed")
OPTION_HELP = {  # default: params.yaml synth.<name>
    "identities": "number of identities (half train, half test; default: synth.identities)",
    "outfits": "outfits (clothes) per identity (default: synth.outfits)",
    "cameras": "number of cameras (default: synth.cameras)",
    "images_per": "images per identity, outfit and camera (default: synth.images_per)",
    "height": "image height in pixels (default: synth.height)",
    "width": "image width in pixels (default: synth.width)",
    "seed": "generator seed: the same seed writes the same bytes (default: synth.seed)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from maskcl.cli import add_config_args

    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic clothes-changing dataset (LTCC layout + ground-truth parsing)",
        description="Options default to the synth group of params.yaml.",
    )
    add_config_args(parser)
    parser.add_argument("--out", type=Path, default=Path("generated/synthetic"), help="output folder")
    for name in OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, dest=name, help=OPTION_HELP[name])
    parser.add_argument(
        "--keep-lower", type=float, default=None, dest="keep_lower",
        help="probability that an outfit re-uses a lower garment already worn (default: synth.keep_lower)",
    )
    parser.add_argument(
        "--shade", type=float, default=None, dest="shade",
        help="RGB std of each garment's shade around its palette colour (default: synth.shade)",
    )
    parser.add_argument(
        "--camera-strength", type=float, default=None, dest="camera_strength",
        help="how far cameras stray from a neutral one, 0 (alike) to 1 (default: synth.camera_strength)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing synthetic dataset in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maskcl.cli import config_from_args
    from maskcl.data.synthetic import SynthSpec, generate_synthetic

    config = config_from_args(args)
    overrides = {
        f"synth.{name}": getattr(args, name) for name in (*OPTIONS, "keep_lower", "shade", "camera_strength") if getattr(args, name) is not None
    }
    if overrides:
        config = config.replace(**overrides)  # validates: bad values fail with the key named
    spec = SynthSpec(**config.to_dict()["synth"])
    started = time.perf_counter()
    root = generate_synthetic(spec, args.out, force=args.force, progress=not args.no_progress)
    log.info("synthetic dataset written to %s in %.1f s", root, time.perf_counter() - started)
    return 0
