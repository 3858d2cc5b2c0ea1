"""Published numbers to put beside ours: ``maskcl/report/data/published_results.csv``.

The CSV is the one place to add rows (reference/published_results.md): one row per
(source, method, dataset, protocol) with columns ``source, method, supervision, dataset,
protocol, mAP, rank1, rank5, rank10, note``. Empty cells (or ``–``/``-``) are missing metrics.
``note`` starting with ``quoted`` marks a number quoted by a third party rather than
transcribed from the paper, so tables flag it instead of passing it off as the paper's.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from maskcl.report.records import ReportError

COLUMNS = ("source", "method", "supervision", "dataset", "protocol", "mAP", "rank1", "rank5", "rank10", "note")
METRIC_COLUMNS = ("mAP", "rank1", "rank5", "rank10")
SUPERVISION = ("unsupervised", "supervised")
MISSING = ("", "–", "-", "—", "n/a", "NA")

# our method key -> the published method names that are "the same method" (for ours − published)
COUNTERPARTS: dict[str, tuple[str, ...]] = {"maskcl": ("MaskCL", "SiCL")}


@dataclass(frozen=True)
class PublishedRow:
    source: str
    method: str
    supervision: str
    dataset: str
    protocol: str
    metrics: dict[str, float | None]  # mAP, rank1, rank5, rank10 (None = not reported)
    note: str = ""

    @property
    def quoted(self) -> bool:
        return self.note.strip().lower().startswith("quoted")

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)


def default_path() -> Path:
    return Path(str(resources.files("maskcl.report") / "data" / "published_results.csv"))


def load_published(path: str | Path | None = None) -> list[PublishedRow]:
    """Read and validate the published-results CSV (default: the packaged one)."""
    if path is None:
        text = (resources.files("maskcl.report") / "data" / "published_results.csv").read_text(encoding="utf-8")
        where = "maskcl/report/data/published_results.csv"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReportError(f"published results file '{path}' does not exist") from None
        where = str(path)
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ReportError(f"'{where}': missing column(s) {missing}; expected {list(COLUMNS)}")
    rows = []
    for line_no, raw in enumerate(reader, start=2):
        supervision = (raw["supervision"] or "").strip()
        if supervision not in SUPERVISION:
            raise ReportError(f"'{where}' line {line_no}: supervision '{supervision}', expected one of {SUPERVISION}")
        metrics: dict[str, float | None] = {}
        for column in METRIC_COLUMNS:
            cell = (raw[column] or "").strip()
            if cell in MISSING:
                metrics[column] = None
                continue
            try:
                metrics[column] = float(cell)
            except ValueError:
                raise ReportError(
                    f"'{where}' line {line_no} column {column}: '{cell}' is not a number (or empty / '–')"
                ) from None
        for column in ("source", "method", "dataset", "protocol"):
            if not (raw[column] or "").strip():
                raise ReportError(f"'{where}' line {line_no}: column {column} is empty")
        rows.append(
            PublishedRow(
                source=raw["source"].strip(),
                method=raw["method"].strip(),
                supervision=supervision,
                dataset=raw["dataset"].strip(),
                protocol=raw["protocol"].strip(),
                metrics=metrics,
                note=(raw["note"] or "").strip(),
            )
        )
    return rows
