"""Result tables for papers: methods × datasets × protocols, mean ± std over seeds, published rows.

A table is built once as data (:class:`Table`: rows of :class:`Cell`) and rendered three ways, so
Markdown, LaTeX and CSV can never disagree:

* Markdown (tabulate ``pipe``): ``61.2 ± 0.8 (n=3)``; best per column ``**x**``, second ``<u>x</u>``.
* LaTeX (booktabs, built by hand so ``\\textbf``/``\\underline`` survive escaping): a ``table``
  environment that compiles in a standard ``article`` with ``\\usepackage{booktabs}``.
* CSV: one line per (row, dataset, protocol, metric) with plain numbers and ``std``/``n`` columns.

Statistics: mean and *sample* standard deviation (ddof = 1) over the runs of a group (normally
the seeds); a group of one run has no std. Best/second are ranked on the values as displayed
(rounded), among our rows and published *unsupervised* rows; Δ rows (ours − published) and
supervised rows are never ranked.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tabulate import tabulate

from maskcl.report.published import COUNTERPARTS, PublishedRow
from maskcl.report.records import RunRecord

log = logging.getLogger(__name__)

PROTOCOL_MEANINGS: dict[str, str] = {
    "standard": "standard: a gallery image of the query's identity taken by the query's camera is excluded",
    "cc": "cc (clothes-changing): also excludes gallery images of the query's identity in the query's clothes",
    "sc": "sc (same-clothes): only gallery images of the query's identity in the query's clothes count as matches",
    "ltcc_cc_maskcl": "ltcc_cc_maskcl: MaskCL code's LTCC setting: query and gallery cut to the ids of info/cloth-change_id_test.txt (45 on LTCC), cc rule",
    "prcc_cc": "prcc_cc: PRCC C (changed clothes) queries against all of test/A (multi-shot)",
    "prcc_sc": "prcc_sc: PRCC B (same clothes) queries against all of test/A (multi-shot)",
    "prcc_cc_single_shot": "prcc_cc_single_shot: MaskCL code's PRCC setting: C queries against one random A image per id, mean of 10 seeded draws",
    "vcclothes_cc": "vcclothes_cc: VC-Clothes cameras 3 and 4 only (clothes changed), standard rule",
    "vcclothes_sc": "vcclothes_sc: VC-Clothes cameras 2 and 3 only (same clothes), standard rule",
}
PROTOCOL_ORDER = tuple(PROTOCOL_MEANINGS)
# protocol names in words, for headers, titles and legends (the keys stay in the CSV)
PROTOCOL_TITLES: dict[str, str] = {
    "standard": "standard",
    "cc": "clothes-changing",
    "sc": "same-clothes",
    "ltcc_cc_maskcl": "clothes-changing (MaskCL LTCC ids)",
    "prcc_cc": "clothes-changing",
    "prcc_sc": "same-clothes",
    "prcc_cc_single_shot": "clothes-changing, single-shot",
    "vcclothes_cc": "clothes-changing (cams 3-4)",
    "vcclothes_sc": "same-clothes (cams 2-3)",
}
PROTOCOL_SHORT: dict[str, str] = {  # compact LaTeX headers; the caption spells them out
    "standard": "Std", "cc": "CC", "sc": "SC", "ltcc_cc_maskcl": "CC$^{\\ast}$", "prcc_cc": "CC", "prcc_sc": "SC",
    "prcc_cc_single_shot": "CC-1", "vcclothes_cc": "CC$_{34}$", "vcclothes_sc": "SC$_{23}$",
}
SETTING_TITLES: dict[str, str] = {
    "eps": "DBSCAN radius eps", "eps_gap": "refinement gap", "k1": "k-reciprocal k1", "k2": "query expansion k2",
    "min_samples": "DBSCAN min samples", "train.epochs": "epochs", "train.iters": "iterations per epoch",
    "train.lr": "learning rate", "train.temp": "temperature", "train.momentum": "memory momentum",
    "train.neighbour_loss": "neighbour loss", "train.cross_view": "cross-view terms", "model.fusion": "fusion",
    "model.arch": "backbone", "cluster.oracle": "labels (oracle)", "seed": "seed",
}


def protocol_title(protocol: str) -> str:
    """``cc`` → ``clothes-changing`` (unknown protocols keep their key)."""
    return PROTOCOL_TITLES.get(protocol, protocol)


def setting_title(key: str) -> str:
    """``eps`` → ``DBSCAN radius eps``; ``train.epochs`` → ``epochs`` (else the key)."""
    return SETTING_TITLES.get(key, key)


def duplicate_protocols(records: Sequence[RunRecord]) -> dict[str, str]:
    """``{protocol: earlier protocol}`` when every record that has either has identical numbers
    for both (e.g. ``ltcc_cc_maskcl`` = ``cc`` on the synthetic set, whose clothes-changing id
    list names every test identity): such a column or figure would only repeat another."""
    protocols = _ordered((p for r in records for p in r.metrics), PROTOCOL_ORDER)
    same: dict[str, str] = {}
    for i, later in enumerate(protocols):
        for earlier in protocols[:i]:
            if earlier in same:
                continue
            having = [r for r in records if later in r.metrics or earlier in r.metrics]
            if having and all(r.metrics.get(later) == r.metrics.get(earlier) for r in having):
                same[later] = earlier
                break
    return same
DATASET_LABELS = {
    "ltcc": "LTCC",
    "prcc": "PRCC",
    "vcclothes": "VC-Clothes",
    "celebreid": "Celeb-reID",
    "celebreidlight": "Celeb-reID-light",
    "deepchange": "DeepChange",
    "market1501": "Market-1501",
    "synthetic": "Synthetic",
}
DATASET_ORDER = tuple(DATASET_LABELS)
METRIC_LABELS = {"mAP": "mAP", "rank1": "R-1", "rank5": "R-5", "rank10": "R-10", "rank20": "R-20"}
METHOD_LABELS = {"maskcl": "MaskCL", "rgb": "RGB-only"}
DEFAULT_METRICS = ("mAP", "rank1")

# config keys that never define a "setting": paths, devices, worker counts, the seed itself
IGNORED_KEYS = frozenset(
    {
        "seed",
        "method",
        "dataset.name",
        "dataset.root",
        "dataset.mask_root",
        "masks.parsing_dir",
        "masks.checkpoint",
        "masks.device",
        "masks.batch_size",
        "train.device",
        "train.workers",
        "eval.batch_size",
    }
)

# groups that hold paths of one run, not method settings (experiments/config.py's ``io`` group)
IGNORED_PREFIXES = ("io.",)

MISSING = "–"
QUOTED_MARK = "†"


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof = 1; ``None`` for one value) of a group's values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        n = len(values)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(mean=mean, std=std, n=n)


@dataclass(frozen=True)
class Column:
    dataset: str
    protocol: str
    metric: str


@dataclass
class Cell:
    value: float | None
    std: float | None = None
    n: int | None = None
    emphasis: str = ""  # "best" | "second" | ""


@dataclass
class Row:
    label: str
    kind: str  # "ours" | "published" | "delta"
    cells: dict[Column, Cell] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)  # leading columns (ablation settings)
    method: str = ""
    source: str = ""
    supervision: str = "unsupervised"
    note: str = ""
    ranked: bool = True


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row]
    key_names: list[str] = field(default_factory=list)  # leading columns besides the row label
    footnotes: list[str] = field(default_factory=list)
    decimals: int = 1


# ---------------------------------------------------------------------------------------------
# grouping
# ---------------------------------------------------------------------------------------------


def table_records(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Records that carry final metrics; evaluate runs win over train runs when both exist.

    A train run may also return final metrics; counting it beside its evaluate run would count
    one model twice. Several runs of one exact configuration count once (the latest).
    """
    with_metrics = [r for r in records if r.metrics]
    if any(r.experiment == "maskcl_evaluate" for r in with_metrics):
        with_metrics = [r for r in with_metrics if r.experiment != "maskcl_train"]
    # Re-running one configuration (same seed) re-measures it, it is not another seed: keep the
    # latest run per exact configuration so that n counts distinct seeds/settings.
    latest: dict[tuple[str, str], RunRecord] = {}
    for record in with_metrics:
        what = {  # what defines the run: everything but paths, devices and the io group
            k: v
            for k, v in record.flat_config.items()
            if k in ("seed", "method", "dataset.name") or (k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES))
        }
        key = (record.experiment, json.dumps(what, sort_keys=True, default=str))
        if key not in latest or (record.start_time or "") >= (latest[key].start_time or ""):
            latest[key] = record
    kept = {id(record) for record in latest.values()}
    return [record for record in with_metrics if id(record) in kept]


def setting_keys(records: Sequence[RunRecord], ignore: Iterable[str] = IGNORED_KEYS) -> list[str]:
    """Config keys whose value differs between runs of the same method and dataset (a sweep)."""
    ignore = set(ignore)
    by_group: dict[tuple[Any, Any], list[RunRecord]] = defaultdict(list)
    for record in records:
        by_group[(record.method, record.dataset)].append(record)
    varying: list[str] = []
    for group in by_group.values():
        keys = sorted(
            k for k in {k for r in group for k in r.flat_config} - ignore if not k.startswith(IGNORED_PREFIXES)
        )
        for key in keys:
            values = {_hashable(r.flat_config.get(key)) for r in group}
            if len(values) > 1 and key not in varying:
                varying.append(key)
    return varying


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _setting(record: RunRecord, keys: Sequence[str]) -> tuple[Any, ...]:
    return tuple(_hashable(record.flat_config.get(k)) for k in keys)


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool) or value is None:
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(values))
    return sorted(unique, key=lambda v: (order.index(v) if v in order else len(order), v))


def _stats(records: Sequence[RunRecord], columns: Sequence[Column]) -> dict[Column, Cell]:
    cells = {}
    for column in columns:
        values = [
            r.metrics[column.protocol][column.metric]
            for r in records
            if r.dataset == column.dataset and column.metric in r.metrics.get(column.protocol, {})
        ]
        if values:
            stat = Stat.of(values)
            cells[column] = Cell(stat.mean, stat.std, stat.n)
    return cells


def _columns(
    records: Sequence[RunRecord], published: Sequence[PublishedRow], metrics: Sequence[str]
) -> list[Column]:
    datasets = _ordered((r.dataset for r in records if r.dataset), DATASET_ORDER)
    if not records:
        datasets = _ordered((p.dataset for p in published), DATASET_ORDER)
    columns = []
    for dataset in datasets:
        protocols = [p for r in records if r.dataset == dataset for p in r.metrics]
        protocols += [p.protocol for p in published if p.dataset == dataset]
        for protocol in _ordered(protocols, PROTOCOL_ORDER):
            columns.extend(Column(dataset, protocol, metric) for metric in metrics)
    return columns


def is_oracle(record: RunRecord) -> bool:
    """Trained on true identities/outfits instead of pseudo-labels (``cluster.oracle``)."""
    return record.flat_config.get("cluster.oracle", "none") not in ("none", None)


def method_label(method: str | None) -> str:
    return METHOD_LABELS.get(method or "", method or "?")


def _short_source(source: str) -> str:
    """``arXiv:2305.13600v2 (...)`` → ``arXiv:2305.13600v2``; a GitHub issue → ``repo#N``."""
    match = re.search(r"arXiv:\S+", source)
    if match:
        return match.group(0)
    match = re.search(r"github\.com/[^/\s]+/([^/\s]+)/(?:issues|pull)/(\d+)", source)
    if match:
        return f"{match.group(1)}#{match.group(2)}"
    return source


# ---------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------


def main_table(
    records: Sequence[RunRecord],
    published: Sequence[PublishedRow] = (),
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    decimals: int = 1,
    title: str = "Main results",
) -> Table:
    """Methods × (dataset, protocol, metric): ours as mean ± std (n), published rows, Δ rows.

    When runs of one method and dataset differ in a config key (a sweep), the main table keeps
    the setting with the most runs and says so in a footnote; the sweep goes to
    :func:`ablation_table`.
    """
    records = table_records(records)
    footnotes: list[str] = []
    # runs trained on true labels (cluster.oracle) are diagnostics, not the unsupervised method:
    # they never stand in an "ours" row; the ablation table shows them under their setting
    oracle = [r for r in records if is_oracle(r)]
    if oracle:
        records = [r for r in records if not is_oracle(r)]
        footnotes.append(
            f"{len(oracle)} run(s) trained on true labels (cluster.oracle) are left out: diagnostics, "
            "not unsupervised results (see the ablation table)."
        )
    chosen: list[RunRecord] = []
    sweep = setting_keys(records)
    by_group: dict[tuple[Any, Any], list[RunRecord]] = defaultdict(list)
    for record in records:
        by_group[(record.method, record.dataset)].append(record)
    for (method, dataset), group in by_group.items():
        if not sweep:
            chosen.extend(group)
            continue
        counts = Counter(_setting(r, sweep) for r in group)
        best, _ = counts.most_common(1)[0]
        kept = [r for r in group if _setting(r, sweep) == best]
        chosen.extend(kept)
        if len(counts) > 1:
            text = ", ".join(f"{k}={v}" for k, v in zip(sweep, best))
            footnotes.append(
                f"{method_label(method)} on {DATASET_LABELS.get(dataset or '', dataset)}: {len(kept)} of "
                f"{len(group)} runs, setting {text} (the most-run one; all settings in the ablation table)."
            )
            log.warning("main table: %s/%s mixes settings of %s; using %s", method, dataset, sweep, text)

    datasets = {r.dataset for r in chosen}
    shown_published = [p for p in published if p.dataset in datasets] if chosen else list(published)
    columns, repeated = _distinct_columns(chosen, _columns(chosen, shown_published, metrics))
    footnotes += repeated
    rows: list[Row] = []
    methods = _ordered((r.method or "?" for r in chosen), tuple(METHOD_LABELS))
    for method in methods:
        group = [r for r in chosen if (r.method or "?") == method]
        rows.append(Row(label=f"{method_label(method)} (ours)", kind="ours", cells=_stats(group, columns), method=method))

    published_rows = _published_rows(shown_published, columns)
    rows.extend(published_rows)
    for ours in [r for r in rows if r.kind == "ours"]:
        for pub in published_rows:
            if pub.method not in COUNTERPARTS.get(ours.method, ()):
                continue
            cells = {}
            for column, cell in ours.cells.items():
                other = pub.cells.get(column)
                if cell.value is not None and other is not None and other.value is not None:
                    cells[column] = Cell(cell.value - other.value)
            if cells:
                rows.append(
                    Row(label=f"Δ {ours.label} − {pub.label}", kind="delta", cells=cells, method=ours.method, ranked=False)
                )
    mark_best(rows, columns, decimals)
    footnotes = _standard_footnotes(columns, rows) + footnotes
    return Table(title=title, columns=columns, rows=rows, footnotes=footnotes, decimals=decimals)


def _distinct_columns(records: Sequence[RunRecord], columns: list[Column]) -> tuple[list[Column], list[str]]:
    """Columns without the protocols that repeat another (:func:`duplicate_protocols`) and a note."""
    same = duplicate_protocols(records)
    if not same:
        return columns, []
    kept = [c for c in columns if c.protocol not in same]
    notes = [
        f"Protocol {later} is not shown: on this data it gives exactly the numbers of {earlier} "
        f"({protocol_title(earlier)})." for later, earlier in same.items()
    ]
    return kept, notes


def _published_rows(published: Sequence[PublishedRow], columns: Sequence[Column]) -> list[Row]:
    wanted = set(columns)
    rows: dict[tuple[str, str], Row] = {}
    for pub in published:
        key = (pub.source, pub.method)
        if key not in rows:
            mark = QUOTED_MARK if pub.quoted else ""
            rows[key] = Row(
                label=f"{pub.method} [{_short_source(pub.source)}]{mark}",
                kind="published",
                method=pub.method,
                source=pub.source,
                supervision=pub.supervision,
                note=pub.note,
                ranked=pub.supervision == "unsupervised",
            )
        row = rows[key]
        if pub.quoted:
            row.note = row.note or pub.note
        for metric, value in pub.metrics.items():
            column = Column(pub.dataset, pub.protocol, metric)
            if column in wanted and value is not None:
                row.cells[column] = Cell(value)
    return list(rows.values())


def ablation_table(
    records: Sequence[RunRecord],
    keys: Sequence[str] | None = None,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    decimals: int = 1,
    title: str = "Ablation",
) -> Table | None:
    """One row per (method, setting of ``keys``), e.g. an ``eps`` sweep; ``None`` if no sweep.

    ``keys`` default: every config key that varies within a method and dataset
    (:func:`setting_keys`). Each row is mean ± std over the runs (seeds) of that setting.
    """
    records = table_records(records)
    keys = list(keys) if keys is not None else setting_keys(records)
    if not keys or not records:
        return None
    columns, repeated = _distinct_columns(records, _columns(records, (), metrics))
    groups: dict[tuple[Any, ...], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method or "?", *_setting(record, keys))].append(record)
    methods = tuple(METHOD_LABELS)
    order = sorted(
        groups,
        key=lambda g: (methods.index(g[0]) if g[0] in methods else len(methods), g[0], [_sort_key(v) for v in g[1:]]),
    )
    rows = [
        Row(
            label=method_label(g[0]),
            kind="ours",
            cells=_stats(groups[g], columns),
            keys=dict(zip(keys, g[1:])),
            method=g[0],
        )
        for g in order
    ]
    mark_best(rows, columns, decimals)
    return Table(
        title=title,
        columns=columns,
        rows=rows,
        key_names=list(keys),
        footnotes=_standard_footnotes(columns, rows) + repeated,
        decimals=decimals,
    )


def mark_best(rows: Sequence[Row], columns: Sequence[Column], decimals: int) -> None:
    """Per column: best value ``best``, next distinct value ``second`` (as displayed, ≥ 2 values)."""
    for column in columns:
        ranked = [
            (round(row.cells[column].value, decimals), row)
            for row in rows
            if row.ranked and row.kind != "delta" and column in row.cells and row.cells[column].value is not None
        ]
        if len(ranked) < 2:
            continue
        distinct = sorted({v for v, _ in ranked}, reverse=True)
        for value, row in ranked:
            if value == distinct[0]:
                row.cells[column].emphasis = "best"
            elif len(distinct) > 1 and value == distinct[1]:
                row.cells[column].emphasis = "second"


def common_n(rows: Sequence[Row]) -> int | None:
    """The number of runs behind our cells when it is the same for all of them, else ``None``."""
    ns = {cell.n for row in rows if row.kind == "ours" for cell in row.cells.values() if cell.value is not None}
    return ns.pop() if len(ns) == 1 else None


def seeds_text(rows: Sequence[Row]) -> str:
    n = common_n(rows)
    if n == 1:
        return "Ours: one run (seed) per cell"
    if n is not None:
        return f"Ours: mean ± sample std (ddof=1) over {n} runs (seeds)"
    return "Ours: mean ± sample std (ddof=1) over n runs (seeds), n given per cell"


def _standard_footnotes(columns: Sequence[Column], rows: Sequence[Row]) -> list[str]:
    notes = [
        f"{seeds_text(rows)}; metrics in %; R-k = rank-k (CMC); "
        "best per column in bold, second underlined (unsupervised rows only)."
    ]
    for protocol in _ordered((c.protocol for c in columns), PROTOCOL_ORDER):
        notes.append("Protocol " + PROTOCOL_MEANINGS.get(protocol, f"{protocol}: (no description registered)"))
    if any(r.kind == "delta" for r in rows):
        notes.append("Δ rows: ours − published, in points.")
    if any(r.kind == "published" and r.label.endswith(QUOTED_MARK) for r in rows):
        notes.append(
            f"{QUOTED_MARK} quoted by a third party, not transcribed from the paper; the quote does not state "
            "the metric order (read as rank-1 / mAP). See the note column of the CSV."
        )
    return notes


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def format_cell(cell: Cell | None, kind: str, decimals: int, with_n: bool = True) -> str:
    """Plain text of a cell (no emphasis): ``61.2 ± 0.8 (n=3)``, ``63.9``, ``+1.2`` or ``–``."""
    if cell is None or cell.value is None:
        return MISSING
    if kind == "delta":
        return f"{cell.value:+.{decimals}f}"
    text = f"{cell.value:.{decimals}f}"
    if kind == "ours":
        if cell.std is not None:
            text += f" ± {cell.std:.{decimals}f}"
        if with_n and cell.n is not None:
            text += f" (n={cell.n})"
    return text


def _header(column: Column) -> str:
    dataset = DATASET_LABELS.get(column.dataset, column.dataset)
    return f"{dataset} {protocol_title(column.protocol)} {METRIC_LABELS.get(column.metric, column.metric)}"


def _key_text(value: Any) -> str:
    return MISSING if value is None else str(value)


def render_markdown(table: Table) -> str:
    """Pipe table + footnote lines; emphasis ``**best**`` and ``<u>second</u>``."""
    headers = ["Method", *table.key_names, *(_header(c) for c in table.columns)]
    body = []
    with_n = common_n(table.rows) is None  # a common n is said once, in the first footnote
    for row in table.rows:
        line = [row.label, *(_key_text(row.keys.get(k)) for k in table.key_names)]
        for column in table.columns:
            cell = row.cells.get(column)
            text = format_cell(cell, row.kind, table.decimals, with_n=with_n)
            if cell is not None and cell.emphasis == "best":
                text = f"**{text}**"
            elif cell is not None and cell.emphasis == "second":
                text = f"<u>{text}</u>"
            line.append(text)
        body.append(line)
    align = ["left"] * (1 + len(table.key_names)) + ["right"] * len(table.columns)
    text = tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=align)
    notes = "\n".join(f"- {note}" for note in table.footnotes)
    return f"**{table.title}**\n\n{text}\n\n{notes}\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "†": r"$^{\dagger}$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "→": r"$\rightarrow$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few non-ASCII symbols the tables use (pdflatex-safe)."""
    out = []
    for char in str(text):
        if char in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[char])
        elif char in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[char])
        elif ord(char) < 128:
            out.append(char)
        else:  # anything else: its ASCII decomposition, or dropped (pdflatex has no glyph for it)
            out.append(unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode())
    return "".join(out)


def _latex_cell(cell: Cell | None, kind: str, decimals: int, with_n: bool = False) -> str:
    if cell is None or cell.value is None:
        return "--"
    if kind == "delta":
        text = f"${cell.value:+.{decimals}f}$"
    else:
        text = f"{cell.value:.{decimals}f}"
    if cell.emphasis == "best":
        text = rf"\textbf{{{text}}}"
    elif cell.emphasis == "second":
        text = rf"\underline{{{text}}}"
    if kind == "ours" and cell.std is not None:
        text += rf"{{\scriptsize$\pm${cell.std:.{decimals}f}}}"
    if kind == "ours" and with_n and cell.n is not None:
        text += rf"$^{{n={cell.n}}}$"
    return text


def _spans(items: Sequence[Any]) -> list[tuple[Any, int, int]]:
    """Runs of equal consecutive items: (item, first index, length)."""
    spans: list[tuple[Any, int, int]] = []
    for i, item in enumerate(items):
        if spans and spans[-1][0] == item:
            spans[-1] = (item, spans[-1][1], spans[-1][2] + 1)
        else:
            spans.append((item, i, 1))
    return spans


def latex_caption(table: Table) -> str:
    """Title, the number of seeds (said once), the protocol abbreviations in words."""
    protocols = _ordered((c.protocol for c in table.columns), PROTOCOL_ORDER)
    words = "; ".join(f"{PROTOCOL_SHORT.get(p, latex_escape(p))} = {latex_escape(protocol_title(p))}" for p in protocols)
    n = common_n(table.rows)
    seeds = (
        "one run per cell" if n == 1 else
        f"mean{{\\scriptsize$\\pm$std}} over {n} seeds" if n is not None else
        "mean{\\scriptsize$\\pm$std} over $n$ seeds (given per cell)"
    )
    return f"{latex_escape(table.title)}: {seeds}; mAP and rank-1 (R-1) in \\%. {words}."


def render_latex(table: Table, label: str = "tab:results") -> str:
    """A booktabs ``table`` for one column of a two-column CVPR/ICCV page.

    Two header rows (dataset; protocol abbreviation + metric), std in small type after the mean,
    the seeds and protocol words in the caption; the tabular shrinks to ``\\linewidth`` only
    when it is wider (``\\resizebox`` of graphicx with a width test), never grows.
    Needs ``\\usepackage{booktabs,graphicx}``.
    """
    lead = 1 + len(table.key_names)
    with_n = common_n(table.rows) is None
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{3pt}",
        rf"\caption{{{latex_caption(table)}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{'l' * lead}{'c' * len(table.columns)}}}",
        r"\toprule",
    ]
    parts = [""] * lead
    rules = []
    for item, start, length in _spans([c.dataset for c in table.columns]):
        parts.append(rf"\multicolumn{{{length}}}{{c}}{{{latex_escape(DATASET_LABELS.get(item, item))}}}")
        rules.append(rf"\cmidrule(lr){{{lead + start + 1}-{lead + start + length}}}")
    lines.append(" & ".join(parts) + r" \\")
    lines.append(" ".join(rules))
    header = ["Method", *(latex_escape(setting_title(k)) for k in table.key_names)]
    header += [
        f"{PROTOCOL_SHORT.get(c.protocol, latex_escape(c.protocol))} {latex_escape(METRIC_LABELS.get(c.metric, c.metric))}"
        for c in table.columns
    ]
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    previous_kind = None
    for row in table.rows:
        if previous_kind is not None and row.kind != previous_kind:
            lines.append(r"\midrule")
        previous_kind = row.kind
        cells = [latex_escape(row.label), *(latex_escape(_key_text(row.keys.get(k))) for k in table.key_names)]
        cells += [_latex_cell(row.cells.get(c), row.kind, table.decimals, with_n) for c in table.columns]
        lines.append(" & ".join(cells) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}}")
    notes = table.footnotes[1:]  # the first one (seeds, metrics) is in the caption
    if notes:
        lines.append(r"\par\smallskip")
        lines.append(r"\begin{minipage}{\linewidth}\scriptsize")
        lines.extend(latex_escape(note) + r"\\" for note in notes)
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    "row",
    "kind",
    "method",
    "source",
    "supervision",
    "dataset",
    "protocol",
    "metric",
    "value",
    "std",
    "n",
    "emphasis",
    "note",
)


def render_csv(table: Table) -> str:
    """Long format: one line per (row, dataset, protocol, metric); plain numbers, std and n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS[:3], *table.key_names, *CSV_COLUMNS[3:]])
    for row in table.rows:
        for column in table.columns:
            cell = row.cells.get(column)
            if cell is None or cell.value is None:
                continue
            writer.writerow(
                [
                    row.label,
                    row.kind,
                    row.method,
                    *(_key_text(row.keys.get(k)) for k in table.key_names),
                    row.source,
                    row.supervision,
                    column.dataset,
                    column.protocol,
                    column.metric,
                    repr(float(cell.value)),
                    "" if cell.std is None else repr(float(cell.std)),
                    "" if cell.n is None else cell.n,
                    cell.emphasis,
                    row.note,
                ]
            )
    return buffer.getvalue()


def write_table(table: Table, stem: str | Path, label: str | None = None) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv``; return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    outputs = {
        stem.with_suffix(".md"): render_markdown(table),
        stem.with_suffix(".tex"): render_latex(table, label=label or f"tab:{stem.name}"),
        stem.with_suffix(".csv"): render_csv(table),
    }
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
    return list(outputs)
