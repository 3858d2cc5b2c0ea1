"""``maskcl report``, ``maskcl visualize``, ``maskcl sync`` and ``maskcl board``.

Examples::

    maskcl report --runs runs/sacred                          # every run of the file store
    maskcl report --runs runs/sacred --outputs results/maskcl/metrics.json --params params.yaml
                                                              # this experiment's runs (the DVC stage)
    maskcl report --runs runs/sacred --dvc-exp-name fancy-mast --dvc-exp-name moody-hems   # two experiments
    maskcl report --runs runs/sacred --run-id 12 --run-id 14  # exactly these runs
    MASKCL_MONGO_URL=mongodb://user:pw@host:27017 maskcl report   # Sacred MongoDB (db: MASKCL_MONGO_DB)
    maskcl report --dvc-exp .                                 # runs `dvc exp show --json -A` here
    maskcl visualize --features results/maskcl/features.npz --queries 5 --out results/plots/rank.png
    maskcl sync --runs runs/sacred --mongo-url mongodb://127.0.0.1:27017
    maskcl board                                              # local MongoDB-wire server + Omniboard

``report`` writes ``<out>/tables/main.{md,tex,csv}``, ``<out>/tables/ablation.{md,tex,csv}`` when
runs differ in a config key (a sweep across experiments), and ``<out>/plots/*.{png,pdf}``; it
prints the Markdown main table. It reads stores only: it never imports the engine (DESIGN §2).
"""

from __future__ import annotations

import argparse
import json
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
    report.add_argument(
        "--outputs",
        type=Path,
        action="append",
        default=[],
        metavar="METRICS_JSON",
        help="keep the evaluate runs that wrote this metrics file (md5 recorded in the run; repeatable): "
        "the runs of one DVC experiment",
    )
    report.add_argument(
        "--params", type=Path, default=None, metavar="PARAMS_YAML",
        help="keep runs whose configuration is this params file (method and paths aside)",
    )
    report.add_argument("--run-id", action="append", default=[], help="keep this run id (repeatable)")
    report.add_argument(
        "--dvc-exp-name", action="append", default=[], help="keep runs recorded by this `dvc exp run` experiment (repeatable)"
    )
    report.add_argument(
        "--trace", type=Path, default=None, help="write which run is behind each table row (JSON) to this file"
    )
    report.add_argument(
        "--published-only", action="store_true",
        help="allow a table of published rows only when no run matches (otherwise that is an error)",
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
    report.add_argument("--decimals", type=int, default=1, help="digits after the point in tables (default 1)")
    report.set_defaults(func=run_report)

    vis = subparsers.add_parser(
        "visualize",
        help="retrieval picture: queries and their top-k gallery images",
        description="Draw each chosen query and its top-k gallery images (green = same identity, red = wrong), "
        "with the clothes id under each, from a features .npz (format: maskcl.eval.features).",
    )
    vis.add_argument("--features", type=Path, required=True, help="features .npz written by the evaluate step")
    vis.add_argument("--queries", default="5", help="N random queries, or indices '3,17,42' (one index: '=7')")
    vis.add_argument("--topk", type=int, default=10, help="gallery images shown per query (default 10)")
    vis.add_argument(
        "--exclude", choices=("standard", "cc", "none"), default="cc",
        help="which gallery images a query may not retrieve: cc (default, the paper's clothes-changing "
        "protocol: same identity in the same clothes or camera), standard (same identity and camera), none",
    )
    vis.add_argument("--root", type=Path, default=None, help="folder relative image paths resolve against")
    vis.add_argument("--seed", type=int, default=0, help="seed of the random query choice")
    vis.add_argument("--out", type=Path, default=Path("results/plots/retrieval.png"))
    vis.set_defaults(func=run_visualize)

    sync = subparsers.add_parser(
        "sync",
        help="send Sacred file-store runs to MongoDB (once each; Omniboard then shows them)",
        description="Send the runs of a Sacred file store to MongoDB in the MongoObserver's shape. "
        "Runs already there are not duplicated; a partial copy is replaced in place.",
    )
    sync.add_argument("--runs", type=Path, default=None, help="the file store (default: ./runs/sacred or $MASKCL_RUNS_DIR)")
    sync.add_argument("--mongo-url", default=None, help=f"MongoDB URL (default: ${ENV_URL})")
    sync.add_argument("--db", "--mongo-db", dest="db", default=None, help=f"database (default: ${ENV_DB}, else 'maskcl')")
    sync.add_argument("--timeout-ms", type=int, default=5000, help="server selection timeout (default 5000)")
    sync.add_argument("--dry-run", action="store_true", help="only say what would be sent")
    sync.set_defaults(func=run_sync)

    from maskcl.report.board_command import register as register_board

    register_board(subparsers)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _store_records(args: argparse.Namespace) -> tuple[list, list]:
    """Everything the given stores hold: (Sacred records, DVC records), not yet filtered."""
    from maskcl.report.records import ReportError
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
    return sacred, dvc


def load_records(args: argparse.Namespace) -> tuple[list, list]:
    """(Sacred records, DVC records): the selection asked for, filtered and de-duplicated.

    ``--outputs``/``--params``/``--run-id``/``--dvc-exp-name`` select evaluate runs; the train
    runs behind them (their curves) come along. Without a selection, every run of the stores.
    """
    from maskcl.report import select
    from maskcl.report.records import deduplicate, filter_records

    store, dvc = _store_records(args)
    sacred = list(store)
    if getattr(args, "run_id", None):
        sacred = select.by_ids(sacred, args.run_id)
    if getattr(args, "dvc_exp_name", None):
        sacred = select.by_dvc_exp(sacred, args.dvc_exp_name)
        dvc = [r for r in dvc if r.run_id in args.dvc_exp_name or r.provenance.dvc_exp in args.dvc_exp_name]
    if getattr(args, "outputs", None):
        sacred = select.by_outputs(sacred, args.outputs)
    if getattr(args, "params", None) is not None:
        sacred = select.by_params(sacred, args.params)
    selecting = any(getattr(args, name, None) for name in ("run_id", "dvc_exp_name", "outputs", "params"))
    if selecting:
        sacred = sacred + [r for r in select.with_train_runs(sacred, store) if r not in sacred]
    filters = dict(
        tags=args.tag or None,
        datasets=args.dataset or None,
        methods=args.method or None,
        statuses=tuple(args.status) if args.status else ("COMPLETED",),
    )
    dvc_filters = dict(filters, tags=None)  # DVC experiments carry no tags: --tag selects Sacred runs only
    return deduplicate(filter_records(sacred, **filters)), deduplicate(filter_records(dvc, **dvc_filters))


def run_report(args: argparse.Namespace) -> int:
    from maskcl.report import select
    from maskcl.report.plots import plot_sweep_with_note, plot_training
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
    if not main_records:
        if not (args.published_only and published):
            raise ReportError(
                "no recorded run with final metrics matched the selection and filters "
                f"({len(sacred)} Sacred and {len(dvc)} DVC record(s) read): nothing to report; "
                "pass --published-only for a table of published numbers alone"
            )
        log.warning("no run matched: the table holds published numbers only (--published-only)")
    tables_dir, plots_dir = args.out / "tables", args.out / "plots"
    table = main_table(main_records, published, metrics=metrics, decimals=args.decimals)
    written = write_table(table, tables_dir / "main", label="tab:main")

    sweep_records = table_records(dvc) if table_records(dvc) and setting_keys(table_records(dvc)) else main_records
    keys = _split(args.ablation_keys) or None
    ablation = ablation_table(sweep_records, keys, metrics=metrics, decimals=args.decimals, title="Ablation / sweep")
    if ablation is not None:
        written += write_table(ablation, tables_dir / "ablation", label="tab:ablation")
        for key in ablation.key_names:
            written += plot_sweep_with_note(sweep_records, key, plots_dir / f"sweep_{key.replace('.', '_')}.png",
                                            metrics=metrics)
    train_runs = [r for r in sacred if r.experiment == "maskcl_train"]
    written += plot_training(train_runs or sacred, plots_dir)
    for path in written:
        log.info("wrote %s", path)
    evaluated = [r for r in main_records if r.experiment != "maskcl_train"] or main_records
    for row in select.trace(evaluated, []):
        log.info("behind the table: %s", ", ".join(f"{k} {v}" for k, v in row.items() if v is not None))
    if args.trace is not None:
        args.trace.parent.mkdir(parents=True, exist_ok=True)
        args.trace.write_text(json.dumps(select.trace(evaluated, train_runs), indent=2) + "\n")
        log.info("wrote %s", args.trace)
    sys.stdout.write(render_markdown(table))
    return 0


def run_visualize(args: argparse.Namespace) -> int:
    from maskcl.report.visualize import choose_queries, load_features, save_retrieval_figure

    features = load_features(args.features, root=args.root)
    indices = choose_queries(args.queries, len(features.query), seed=args.seed)
    path = save_retrieval_figure(features, indices, args.out, topk=args.topk, exclude=args.exclude)
    log.info("wrote %s (%d queries)", path, len(indices))
    return 0


def run_sync(args: argparse.Namespace) -> int:
    from maskcl.report.records import ReportError, StoreUnreachable, redact_text, redact_url
    from maskcl.report.sync import sync

    url = args.mongo_url or os.environ.get(ENV_URL, "").strip() or None
    if url is None:
        raise ReportError(f"no MongoDB given: pass --mongo-url URL or set ${ENV_URL} (e.g. mongodb://127.0.0.1:27017)")
    db_name = args.db or os.environ.get(ENV_DB, "").strip() or "maskcl"
    runs_dir = args.runs if args.runs is not None else default_runs_dir()
    if not runs_dir.is_dir():
        raise ReportError(f"Sacred file store '{runs_dir}' does not exist (expected <runs>/<id>/run.json)")
    try:
        report = sync(runs_dir, url, db_name, timeout_ms=args.timeout_ms, dry_run=args.dry_run)
    except Exception as exc:  # noqa: BLE001 - one line, never the URL's password
        raise StoreUnreachable(f"MongoDB at {redact_url(url)}: {redact_text(f'{type(exc).__name__}: {exc}', url)}") from None
    sys.stdout.write(f"{'would send' if args.dry_run else 'sent'} {runs_dir} → {redact_url(url)}/{db_name}: {report}\n")
    return 0


def default_runs_dir() -> Path:
    """``$MASKCL_RUNS_DIR`` or ``./runs/sacred`` (where the experiments' file store is)."""
    env = os.environ.get("MASKCL_RUNS_DIR", "").strip()
    return Path(env).expanduser() if env else Path("runs") / "sacred"
