"""The ``maskcl`` command: synth, masks, train, evaluate, report, visualize.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``; this module
only assembles them, loads the typed config, and turns a :class:`~maskcl.errors.MaskclError` into
one line on stderr and a non-zero exit (a traceback would bury what the user must fix).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from maskcl.config import Config
from maskcl.errors import ConfigError, MaskclError

log = logging.getLogger("maskcl")

# subcommand modules, imported lazily so `maskcl --help` does not pay for torch
COMMAND_MODULES = (
    "maskcl.data.synthetic_command",
    "maskcl.data.command",
    "maskcl.masks.command",
    "maskcl.engine.command",
    "maskcl.report.command",
)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` and repeatable ``--set key=value`` (dotted keys, YAML-typed values)."""
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params.yaml to read (default: ./params.yaml when present, else the built-in defaults)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set eps=0.55 --set train.epochs=2",
    )


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. --set train.epochs=2")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def config_from_args(args: argparse.Namespace) -> Config:
    params: Path | None = args.params
    if params is None and Path("params.yaml").exists():
        params = Path("params.yaml")
    config = Config.from_yaml(params) if params is not None else Config()
    overrides = dict(parse_override(text) for text in getattr(args, "overrides", []))
    if not overrides:
        return config
    try:
        return config.replace(**overrides)
    except KeyError as exc:
        raise ConfigError(f"--set: unknown key {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"--set: {exc}") from None


def _version() -> str:
    from maskcl import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskcl", description="Unsupervised clothes-changing person re-ID with MaskCL."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # under torchrun every process runs this; only rank 0 speaks below WARNING (RANK is read from
    # the environment: the process group is not up yet)
    quiet = os.environ.get("RANK", "0").strip() not in ("", "0")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MaskclError as exc:
        print(f"maskcl {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"maskcl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
