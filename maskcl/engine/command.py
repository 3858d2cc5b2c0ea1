"""Subcommands ``maskcl train`` and ``maskcl evaluate``.

    maskcl train --out runs/maskcl-s111 --set method=rgb --set train.epochs=2
    maskcl evaluate --checkpoint runs/maskcl-s111/last.pt --out results/metrics.json
    torchrun --nproc_per_node=4 -m maskcl train --out runs/ddp --set train.batch_size=64

``train`` resumes automatically when ``--out`` already holds ``last.pt``. Under ``torchrun``
``train.batch_size`` is the global batch (see :mod:`maskcl.engine.distributed`) and only rank 0
writes ``metrics.json``. torch is imported
inside ``run`` so ``maskcl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from maskcl.cli import add_config_args, config_from_args

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train MaskCL (or the RGB-only baseline); resumes from --out")
    add_config_args(train)
    train.add_argument("--out", type=Path, required=True, help="run folder: last.pt, history.json, metrics.json")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser("evaluate", help="score a checkpoint on the configured dataset")
    add_config_args(evaluate)
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="last.pt written by `maskcl train`")
    evaluate.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    evaluate.add_argument(
        "--features", type=Path, default=None, help="also save query/gallery features (.npz) for `maskcl visualize`"
    )
    evaluate.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from maskcl.atomic import write_text_atomic
    from maskcl.engine.distributed import launch_rank
    from maskcl.engine.lock import train_lock
    from maskcl.engine.trainer import fit

    cfg = config_from_args(args)
    main = launch_rank() == 0
    # the folder stays locked until metrics.json is written (fit takes the same lock again)
    with train_lock(args.out) if main else nullcontext():
        result = fit(cfg, args.out)
        if not main:  # every process returns the same result; rank 0 writes it
            return 0
        # the last epoch is the result; best_on_test is a test-set selection, stored under its own label
        summary = {"epochs": result.epochs, "metrics": result.metrics, "best_on_test": result.best_on_test}
        from maskcl.eval.summary import format_metrics

        log.info("last epoch %d:\n%s", result.epochs, format_metrics(result.metrics))
        write_text_atomic(Path(args.out) / "metrics.json", json.dumps(summary, indent=2) + "\n", "metrics file")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from maskcl.atomic import write_text_atomic
    from maskcl.engine.trainer import evaluate_checkpoint

    cfg = config_from_args(args)
    metrics = evaluate_checkpoint(cfg, args.checkpoint, features_out=args.features)
    text = json.dumps(metrics, indent=2)
    print(text, flush=True)  # first: a failed write below never loses the scores
    if args.out is not None:
        write_text_atomic(args.out, text + "\n", "metrics file")
    return 0
