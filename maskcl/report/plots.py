"""Figures for papers: training curves (mAP / rank-1 / clusters per epoch) and sweeps.

Camera-ready rules: every figure is written twice, a vector PDF beside a 200-dpi PNG, both
byte-identical for identical inputs (no creation date in the PDF), so DVC sees no change when
the numbers do not change; titles, axes and legends are in words (method names, protocol names,
the swept setting), never config keys or run ids; value axes start at 0 (percentages and counts),
so noise is not drawn as a trend; one figure per *distinct* protocol (a protocol whose curves
equal another's in every run, e.g. ``ltcc_cc_maskcl`` = ``cc`` on the synthetic set, is not
drawn twice). A sweep figure joins only runs that differ in the swept key alone, and says in its
caption how many runs it left out and why.

Matplotlib is used through its object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``),
so importing this module never changes the global backend of a notebook or a GUI session.
Curves come from Sacred's per-epoch ``log_scalar`` series (``test.<protocol>.mAP``,
``test.<protocol>.rank1``, ``cluster.n_clusters``, ``cluster.n_unclustered``, ``train.loss``).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from matplotlib.ticker import MaxNLocator

from maskcl.report.records import RunRecord
from maskcl.report.tables import (
    DATASET_LABELS,
    METRIC_LABELS,
    Stat,
    duplicate_protocols,
    method_label,
    protocol_title,
    setting_title,
    table_records,
)

log = logging.getLogger(__name__)

DPI = 200
FORMATS = (".png", ".pdf")
METRIC_WORDS = {"mAP": "mAP (%)", "rank1": "rank-1 (%)", "rank5": "rank-5 (%)", "rank10": "rank-10 (%)"}


def _figure(n_panels: int, width_per: float = 4.2, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a fixed layout: constrained/tight layout cost more than the drawing itself
    fig = Figure(figsize=(width_per * n_panels, height), dpi=DPI)
    fig.subplots_adjust(left=0.1 / min(n_panels, 2) + 0.04, right=0.98, top=0.86, bottom=0.16, wspace=0.32)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig: Any, out: Path) -> Path:
    """Write ``out`` (PNG) and the same figure as a vector PDF beside it; return the PNG path.

    No date and a fixed producer in the metadata: the files are byte-identical run after run.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = out.with_suffix(".png"), out.with_suffix(".pdf")
    fig.savefig(png, dpi=DPI, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    log.info("wrote %s and %s", png, pdf.name)
    return png


def _zero_based(ax: Any) -> None:
    """Value axis from 0 (a 0.03-wide axis makes noise look like a trend)."""
    low, high = ax.get_ylim()
    ax.set_ylim(0, max(high, 1e-9) * 1.05 if low >= 0 else high)


def plot_curves(
    records: Sequence[RunRecord],
    names: Sequence[str],
    out: str | Path,
    *,
    title: str | None = None,
    ylabels: Sequence[str] | None = None,
) -> Path | None:
    """One panel per curve name, one line per run (legend: method, dataset, seed, run id).

    Returns ``None`` (and writes nothing) when no record has any of the curves.
    """
    with_curves = [r for r in records if any(r.curves.get(n) for n in names)]
    if not with_curves:
        return None
    if ylabels:  # keep the panels some run has data for
        ylabels = [y for y, n in zip(ylabels, names) if any(r.curves.get(n) for r in with_curves)]
    names = [n for n in names if any(r.curves.get(n) for r in with_curves)]
    fig, axes = _figure(len(names))
    for i, (ax, name) in enumerate(zip(axes, names)):
        for record in with_curves:
            points = record.curves.get(name) or []
            if not points:
                continue
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, linewidth=1.4, label=record.label())
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabels[i] if ylabels else name)
        _zero_based(ax)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        for ax in axes[1:]:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    ncols = min(3, max(1, len(labels)))
    legend_rows = math.ceil(len(labels) / ncols)
    fig.set_figheight(fig.get_figheight() + 0.18 * legend_rows)
    fig.subplots_adjust(bottom=0.16 + 0.075 * legend_rows)
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncols=ncols, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(out))


def curve_protocols(records: Sequence[RunRecord]) -> list[str]:
    """Protocols with a per-epoch ``test.<protocol>.mAP`` or ``.rank1`` curve."""
    found: dict[str, None] = {}
    for record in records:
        for name in record.curves:
            parts = name.split(".")
            if len(parts) == 3 and parts[0] == "test" and parts[2] in ("mAP", "rank1"):
                found[parts[1]] = None
    return list(found)


def plot_training(records: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """``curves_<protocol>.{png,pdf}`` (mAP, rank-1 per epoch) for each distinct protocol,
    ``clusters`` and ``loss``; returns the PNG paths."""
    out_dir = Path(out_dir)
    written = []
    protocols = curve_protocols(records)
    same = duplicate_curve_protocols(records, protocols)
    for protocol in protocols:
        if protocol in same:
            log.info("no figure for protocol %s: its curves equal those of %s in every run", protocol, same[protocol])
            continue
        path = plot_curves(
            records,
            [f"test.{protocol}.mAP", f"test.{protocol}.rank1"],
            out_dir / f"curves_{protocol}.png",
            title=f"{protocol_title(protocol).capitalize()} protocol: test mAP and rank-1 per epoch",
            ylabels=["mAP (%)", "rank-1 (%)"],
        )
        written.append(path)
    written.append(
        plot_curves(
            records,
            ["cluster.n_clusters", "cluster.n_unclustered"],
            out_dir / "clusters.png",
            title="Pseudo-labels per epoch",
            ylabels=["clusters", "un-clustered images"],
        )
    )
    written.append(plot_curves(records, ["train.loss"], out_dir / "loss.png", title="Training loss", ylabels=["loss"]))
    return [p for p in written if p is not None]


def duplicate_curve_protocols(records: Sequence[RunRecord], protocols: Sequence[str]) -> dict[str, str]:
    """``{protocol: earlier protocol}`` for protocols whose mAP and rank-1 curves (and final
    metrics) equal an earlier protocol's in every run that has them."""
    same: dict[str, str] = {}
    for i, later in enumerate(protocols):
        for earlier in protocols[:i]:
            if earlier in same:
                continue
            having = [r for r in records if r.curves.get(f"test.{later}.mAP") or r.curves.get(f"test.{earlier}.mAP")]
            if having and all(
                r.curves.get(f"test.{later}.{m}") == r.curves.get(f"test.{earlier}.{m}") for r in having for m in ("mAP", "rank1")
            ):
                same[later] = earlier
                break
    return same


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def sweep_runs(records: Sequence[RunRecord], key: str) -> tuple[list[RunRecord], list[tuple[RunRecord, list[str]]]]:
    """(runs that differ from each other in ``key`` only, dropped runs with the keys they differ in).

    The reference is the most common setting of every other varying key, per method and dataset;
    a run that differs from it in any of those keys would mix two effects in one line.
    """
    from maskcl.report.tables import setting_keys

    others = [k for k in setting_keys(records) if k != key]
    kept: list[RunRecord] = []
    dropped: list[tuple[RunRecord, list[str]]] = []
    groups: dict[tuple[Any, Any], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.dataset)].append(record)
    for group in groups.values():
        settings = [tuple(repr(r.flat_config.get(k)) for k in others) for r in group]
        reference = max(set(settings), key=lambda s: (settings.count(s), s))
        for record, setting in zip(group, settings):
            differs = [k for k, a, b in zip(others, setting, reference) if a != b]
            (dropped.append((record, differs)) if differs else kept.append(record))
    return kept, dropped


def plot_sweep(
    records: Sequence[RunRecord],
    key: str,
    out: str | Path,
    *,
    protocol: str | None = None,
    metrics: Sequence[str] = ("mAP", "rank1"),
    note: str | None = None,
) -> Path | None:
    """Metric vs a config key (e.g. ``eps``): mean ± std over seeds, one line per method/dataset.

    Only runs that differ in ``key`` alone are joined (:func:`sweep_runs`); ``note`` (or a note
    naming the runs left out) is printed under the figure. ``protocol`` default: the first
    protocol of the first record. Runs whose ``key`` is not a number are skipped. Returns
    ``None`` when fewer than two distinct values of ``key`` exist.
    """
    records = [r for r in table_records(records) if _numeric(r.flat_config.get(key)) is not None]
    records, dropped = sweep_runs(records, key)
    if note is None and dropped:
        note = dropped_note(dropped)
    if protocol is None:
        protocol = headline_protocol(records)
    records = [r for r in records if protocol in r.metrics]
    if protocol is None or len({r.flat_config[key] for r in records}) < 2:
        return None
    fig, axes = _figure(len(metrics))
    lines: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds = sorted({str(r.seed) for r in records})
    for ax, metric in zip(axes, metrics):
        lines.clear()
        for record in records:
            value = record.metrics[protocol].get(metric)
            if value is not None:
                lines[(record.method or "?", record.dataset or "?")][float(record.flat_config[key])].append(value)
        for (method, dataset), by_x in sorted(lines.items()):
            xs = sorted(by_x)
            stats = [Stat.of(by_x[x]) for x in xs]
            means = [s.mean for s in stats]
            stds = [s.std or 0.0 for s in stats]
            label = f"{method_label(method)}, {DATASET_LABELS.get(dataset, dataset)}"
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, linewidth=1.4, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.15)
        ax.set_xlabel(setting_title(key))
        ax.set_ylabel(f"{protocol_title(protocol)} {METRIC_WORDS.get(metric, metric)}")
        _zero_based(ax)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    fig.suptitle(f"{protocol_title(protocol).capitalize()} results vs {setting_title(key)} ({spread})", fontsize=10)
    if note:
        fig.subplots_adjust(bottom=0.26)
        fig.text(0.5, 0.02, note, ha="center", fontsize=7, wrap=True)
    return _save(fig, Path(out))


def headline_protocol(records: Sequence[RunRecord]) -> str | None:
    """The paper's protocol when the runs have it (clothes-changing), else the first one found."""
    found = [p for r in records for p in r.metrics]
    for preferred in ("cc", "ltcc_cc_maskcl", "prcc_cc_single_shot", "prcc_cc", "vcclothes_cc"):
        if preferred in found:
            return preferred
    return found[0] if found else None


def dropped_note(dropped: Sequence[tuple[RunRecord, list[str]]]) -> str:
    """``"Left out: 2 runs that also differ in train.epochs, train.iters."``"""
    keys = sorted({k for _, ks in dropped for k in ks})
    return f"Left out: {len(dropped)} run(s) that also differ in {', '.join(keys)}."


def plot_sweep_with_note(records: Sequence[RunRecord], key: str, out: str | Path, *,
                         metrics: Sequence[str] = ("mAP", "rank1")) -> list[Path]:
    """:func:`plot_sweep` that logs the runs it left out; ``[png]`` or ``[]``."""
    kept, dropped = sweep_runs([r for r in table_records(records) if _numeric(r.flat_config.get(key)) is not None], key)
    for record, keys in dropped:
        log.warning("sweep over %s: run %s left out (it also differs in %s)", key, record.run_id, ", ".join(keys))
    path = plot_sweep(records, key, out, metrics=metrics)
    return [] if path is None else [path]
