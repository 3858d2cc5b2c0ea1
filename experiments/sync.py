"""``python -m experiments.sync`` — kept for old scripts; the command is ``maskcl sync``.

Usage::

    maskcl sync --runs runs/sacred --mongo-url mongodb://user:pass@host:27017
    MASKCL_MONGO_URL=mongodb://127.0.0.1:27017 python -m experiments.sync --runs runs/sacred --dry-run

The implementation lives in :mod:`maskcl.report.sync` (no Sacred import), so the ``maskcl``
command can offer it; this module re-exports it and runs the same command line.
"""

from __future__ import annotations

import sys

from maskcl.report.sync import METRICS, RUNS, MongoSync, SyncReport, file_store_runs, run_key, sync  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """The ``maskcl sync`` command line (same flags: ``--runs``, ``--mongo-url``, ``--db``, ``--dry-run``)."""
    from maskcl.cli import main as maskcl_main

    return maskcl_main(["sync", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
