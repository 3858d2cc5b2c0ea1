"""``maskcl board``: one command from a Sacred file store to a browsable Omniboard dashboard.

    maskcl board                                   # runs/sacred → http://127.0.0.1:9000
    maskcl board --runs runs/sacred --web-port 9001 --port 27018
    maskcl board --mongo-url mongodb://127.0.0.1:27017     # a real mongod (README's Docker line)

What it does, in order: starts the embedded MongoDB-wire server (``nx-27017``; its database file
under ``--data-dir``) behind :class:`maskcl.report.board.WireProxy` (which advertises a wire
version Omniboard's driver accepts), sends the file store's runs into it (:mod:`.sync`, idempotent:
a re-run adds only new runs), then starts Omniboard against the proxy when it is installed, or
prints the exact command to install and start it. Ctrl-C stops what it started.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    board = subparsers.add_parser(
        "board",
        help="local run dashboard: MongoDB-wire server + Omniboard, fed from the Sacred file store",
        description="Start a local MongoDB-wire server Omniboard accepts, send the Sacred file-store runs "
        "into it, and start Omniboard (or print how to install and start it).",
    )
    board.add_argument("--runs", type=Path, default=None, help="Sacred file store (default: runs/sacred or $MASKCL_RUNS_DIR)")
    board.add_argument("--db", default="maskcl", help="database name (default maskcl)")
    board.add_argument("--port", type=int, default=27018, help="port Omniboard connects to (default 27018; 0 = any free)")
    board.add_argument("--web-port", type=int, default=9000, help="Omniboard's web port (default 9000)")
    board.add_argument(
        "--data-dir", type=Path, default=Path("runs/board"), help="where the embedded server keeps its database file"
    )
    board.add_argument(
        "--mongo-url", default=None,
        help="use this MongoDB instead of the embedded server (a real mongod needs no proxy)",
    )
    board.add_argument("--omniboard", default=None, help="Omniboard executable (default: $MASKCL_OMNIBOARD, "
                       "./node_modules/.bin/omniboard, or omniboard on PATH)")
    board.add_argument("--no-omniboard", action="store_true", help="serve and sync only; print the Omniboard command")
    board.add_argument("--serve-seconds", type=float, default=None,
                       help="stop after this many seconds (default: until Ctrl-C)")
    board.set_defaults(func=run_board)


def run_board(args: argparse.Namespace) -> int:
    from maskcl.report import board as b
    from maskcl.report.command import default_runs_dir
    from maskcl.report.records import ReportError, redact_url
    from maskcl.report.sync import sync

    runs_dir = args.runs if args.runs is not None else default_runs_dir()
    if not runs_dir.is_dir():
        raise ReportError(f"Sacred file store '{runs_dir}' does not exist: run the pipeline first (make repro)")
    # `kill` (SIGTERM) must stop the server and Omniboard too, like Ctrl-C: run the finally below
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started: list = []
    proxy = None
    try:
        if args.mongo_url:
            url, host, port = args.mongo_url, None, None
        else:
            server, upstream = b.start_nx27017(args.data_dir.resolve())
            started.append(server)
            proxy = b.WireProxy("127.0.0.1", upstream, port=args.port).start()
            url, host, port = f"mongodb://127.0.0.1:{upstream}", "127.0.0.1", proxy.port
            log.info("embedded MongoDB-wire server on 127.0.0.1:%d, Omniboard-compatible proxy on 127.0.0.1:%d",
                     upstream, proxy.port)
        report = sync(runs_dir, url, args.db)
        log.info("synced %s → %s/%s: %s", runs_dir, redact_url(url), args.db, report)
        if host is None:
            from urllib.parse import urlparse

            parsed = urlparse(args.mongo_url)
            host, port = parsed.hostname or "127.0.0.1", parsed.port or 27017
        executable = None if args.no_omniboard else (args.omniboard or b.find_omniboard(Path.cwd()))
        web = f"http://127.0.0.1:{args.web_port}"
        if executable:
            started.append(b.start_omniboard(executable, host, port, args.db, args.web_port, args.data_dir.resolve()))
            sys.stdout.write(f"Omniboard: {web}  (runs of {runs_dir} in {host}:{port}/{args.db}; Ctrl-C stops)\n")
        else:
            sys.stdout.write(
                f"MongoDB for Omniboard: {host}:{port}/{args.db} ({len(report.inserted) + len(report.updated) + len(report.skipped)} runs)\n"
                f"Omniboard is not installed here. Install and start it with:\n"
                f"  {b.INSTALL_HINT}\n"
                f"  {b.omniboard_command(port, args.db, args.web_port)}\n"
                f"then open {web}  (Ctrl-C here stops the server)\n"
            )
        sys.stdout.flush()
        deadline = None if args.serve_seconds is None else time.monotonic() + args.serve_seconds
        while deadline is None or time.monotonic() < deadline:
            for process in started:
                if process.proc.poll() is not None:
                    raise ReportError(f"{process.name} stopped (exit {process.proc.returncode}); see {process.log_path}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in reversed(started):
            process.stop()
        if proxy is not None:
            proxy.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    from maskcl.cli import main

    sys.exit(main(["board", *sys.argv[1:]]))
