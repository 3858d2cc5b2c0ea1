"""Evaluation results as text a person reads in a log: one aligned row per protocol.

Why: ``{'cc': {'mAP': 1.9554303732260252, ...}}`` in a log line hides the numbers in digits and
braces; a researcher scanning a training log wants the table a paper would print.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

COLUMNS = (("mAP", "mAP"), ("rank1", "R-1"), ("rank5", "R-5"), ("rank10", "R-10"), ("rank20", "R-20"))


def format_metrics(metrics: Mapping[str, Mapping[str, Any]], decimals: int = 2) -> str:
    """``{protocol: {mAP, rank1, ..., n_queries}}`` → a plain-text table (metrics in %).

    Columns appear when some protocol has them; ``queries`` is ``n_queries`` (``- n_skipped``
    queries without a valid match are said in brackets).
    """
    present = [(key, label) for key, label in COLUMNS if any(key in values for values in metrics.values())]
    rows = []
    for protocol, values in metrics.items():
        row: list[Any] = [protocol]
        row += ["–" if values.get(key) is None else f"{float(values[key]):.{decimals}f}" for key, _ in present]
        queries = values.get("n_queries")
        skipped = values.get("n_skipped")
        text = "" if queries is None else str(int(queries))
        if skipped:
            text += f" ({int(skipped)} skipped)"
        row.append(text)
        rows.append(row)
    headers = ["protocol", *(label for _, label in present), "queries"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left", *("right",) * (len(present) + 1)))


def format_line(values: Mapping[str, Any], decimals: int = 2) -> str:
    """One protocol on one line: ``mAP 2.54, R-1 3.33, R-5 5.56, R-10 11.11 (90 queries)``."""
    parts = [f"{label} {float(values[key]):.{decimals}f}" for key, label in COLUMNS if values.get(key) is not None]
    queries = values.get("n_queries")
    tail = "" if queries is None else f" ({int(queries)} queries" + (f", {int(values['n_skipped'])} skipped" if values.get("n_skipped") else "") + ")"
    return ", ".join(parts) + tail
