"""``maskcl report`` and ``maskcl visualize``.

Examples::

    maskcl report --runs runs/sacred                          # Sacred file store
    MASKCL_MONGO_URL=mongodb://user:pw@host:27017 maskcl report   # Sacred MongoDB (db: MASKCL_MONGO_DB)
    maskcl report --dvc-exp .                                 # runs `dvc exp show --json` here
    maskcl report --dvc-exp exps.json --runs results/sacred --dataset ltcc --tag paper
    maskcl visualize --features results/eval/features.npz --queries 5 --out results/plots/rank.png

``report`` writes ``<out>/tables/main.{md,tex,csv}``, ``<out>/tables/ablation.{md,tex,csv}`` when
runs differ in a config key (a sweep, e.g. ``eps`` from ``dvc exp run -S``), and
``<out>/plots/*.png``; it prints the Markdown main table. It reads stores only: it never imports
the engine (DESIGN §2).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

ENV_URL = "MASKCL_MONGO_URL"
ENV_DB = "MASKCL_MONGO_DB"


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="tables (Markdown, LaTeX, CSV) and plots from recorded runs",
        description="Turn recorded runs (Sacred file store / MongoDB, DVC experiments) into paper tables and plots.",
    )
    report.add_argument(
        "--runs",
        type=Path,
        action="append",
        default=[],
        help="Sacred file store folder (repeatable; default runs/sacred when no other store is given)",
    )
    report.add_argument("--mongo-url", default=None, help=f"Sacred MongoDB URL (default: ${ENV_URL})")
    report.add_argument("--mongo-db", default=None, help=f"MongoDB database (default: ${ENV_DB}, else 'maskcl')")
    report.add_argument(
        "--dvc-exp",
        default=None,
        metavar="DIR_OR_JSON",
        help="DVC experiments: a repo folder (runs `dvc exp show --json -A` there) or a saved JSON file",
    )
    report.add_argument("--out", type=Path, default=Path("results"), help="output folder (tables/, plots/)")
    report.add_argument("--tag", action="append", default=[], help="keep runs carrying this tag (repeatable: all)")
    report.add_argument("--dataset", action="append", default=[], help="keep this dataset (repeatable)")
    report.add_argument("--method", action="append", default=[], help="keep this method (repeatable)")
    report.add_argument(
        "--status", action="append", default=[], help="keep runs with this status (default: COMPLETED; repeatable)"
    )
    report.add_argument(
        "--published", action=argparse.BooleanOptionalAction, default=True, help="show published numbers beside ours"
    )
    report.add_argument("--published-file", type=Path, default=None, help="published results CSV (default: packaged)")
    report.add_argument(
        "--metrics", default="mAP,rank1", help="metrics per protocol, comma-separated (mAP,rank1,rank5,rank10)"
    )
    report.add_argument("--ablation-keys", default=None, help="config keys of the ablation rows (default: detected)")
    report.add_argument("--decimals", type=int, default=1)
    report.set_defaults(func=run_report)

    vis = subparsers.add_parser(
        "visualize",
        help="retrieval picture: queries and their top-k gallery images",
        description="Draw each chosen query and its top-k gallery images (green = same identity, red = wrong), "
        "with the clothes id under each, from a features .npz (format: maskcl.eval.features).",
    )
    vis.add_argument("--features", type=Path, required=True, help="features .npz written by the evaluate step")
    vis.add_argument("--queries", default="5", help="N random queries, or indices '3,17,42' (one index: '=7')")
    vis.add_argument("--topk", type=int, default=10)
    vis.add_argument("--exclude", choices=("standard", "cc", "none"), default="standard", help="protocol exclusion rule")
    vis.add_argument("--root", type=Path, default=None, help="folder relative image paths resolve against")
    vis.add_argument("--seed", type=int, default=0, help="seed of the random query choice")
    vis.add_argument("--out", type=Path, default=Path("results/plots/retrieval.png"))
    vis.set_defaults(func=run_visualize)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def load_records(args: argparse.Namespace) -> tuple[list, list]:
    """(Sacred records, DVC records), filtered and de-duplicated."""
    from maskcl.report.records import ReportError, deduplicate, filter_records
    from maskcl.report.stores import read_dvc_exps, read_file_store, read_mongo

    sacred = []
    url = args.mongo_url or os.environ.get(ENV_URL)
    if url:
        db_name = args.mongo_db or os.environ.get(ENV_DB) or "maskcl"
        sacred += read_mongo(url, db_name)
    for folder in args.runs:
        sacred += read_file_store(folder)
    dvc = read_dvc_exps(args.dvc_exp) if args.dvc_exp else []
    if not url and not args.runs and not args.dvc_exp:
        default = Path("runs/sacred")  # where experiments/observers.py puts the file store
        if not default.is_dir():
            raise ReportError(
                f"no run store given: pass --runs DIR, --mongo-url/${ENV_URL} or --dvc-exp, "
                f"or create the default file store '{default}'"
            )
        sacred = read_file_store(default)
    filters = dict(
        tags=args.tag or None,
        datasets=args.dataset or None,
        methods=args.method or None,
        statuses=tuple(args.status) if args.status else ("COMPLETED",),
    )
    dvc_filters = dict(filters, tags=None)  # DVC experiments carry no tags: --tag selects Sacred runs only
    return deduplicate(filter_records(sacred, **filters)), deduplicate(filter_records(dvc, **dvc_filters))


def run_report(args: argparse.Namespace) -> int:
    from maskcl.report.plots import plot_sweep, plot_training
    from maskcl.report.published import load_published
    from maskcl.report.records import ReportError
    from maskcl.report.tables import ablation_table, main_table, render_markdown, setting_keys, table_records, write_table

    metrics = _split(args.metrics)
    sacred, dvc = load_records(args)
    published = load_published(args.published_file) if args.published else []
    if args.published and (args.dataset or args.method):
        published = [p for p in published if not args.dataset or p.dataset in args.dataset]
    # Sacred records are the record of what ran (anchors §4 rule 7); DVC alone when there are none
    main_records = table_records(sacred) or table_records(dvc)
    if not main_records and not published:
        raise ReportError("no run with final metrics matched the filters, and no published rows to show")
    tables_dir, plots_dir = args.out / "tables", args.out / "plots"
    table = main_table(main_records, published, metrics=metrics, decimals=args.decimals)
    written = write_table(table, tables_dir / "main", label="tab:main")

    sweep_records = table_records(dvc) if table_records(dvc) and setting_keys(table_records(dvc)) else main_records
    keys = _split(args.ablation_keys) or None
    ablation = ablation_table(sweep_records, keys, metrics=metrics, decimals=args.decimals, title="Ablation / sweep")
    if ablation is not None:
        written += write_table(ablation, tables_dir / "ablation", label="tab:ablation")
        for key in ablation.key_names:
            path = plot_sweep(sweep_records, key, plots_dir / f"sweep_{key.replace('.', '_')}.png", metrics=metrics)
            if path is not None:
                written.append(path)
    written += plot_training(sacred, plots_dir)
    for path in written:
        log.info("wrote %s", path)
    sys.stdout.write(render_markdown(table))
    return 0


def run_visualize(args: argparse.Namespace) -> int:
    from maskcl.report.visualize import choose_queries, load_features, save_retrieval_figure

    features = load_features(args.features, root=args.root)
    indices = choose_queries(args.queries, len(features.query), seed=args.seed)
    path = save_retrieval_figure(features, indices, args.out, topk=args.topk, exclude=args.exclude)
    log.info("wrote %s (%d queries)", path, len(indices))
    return 0
