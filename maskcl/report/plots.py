"""Figures: training curves (mAP / rank-1 / clusters per epoch, several runs per plot) and sweeps.

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
from maskcl.report.tables import DATASET_LABELS, METRIC_LABELS, Stat, method_label, table_records

log = logging.getLogger(__name__)

DPI = 120


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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    log.info("wrote %s", out)
    return out


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
        ax.set_title(name, fontsize=9)
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
    fig.legend(handles, labels, loc="lower center", fontsize=7, ncols=ncols, frameon=False)
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
    """``curves_<protocol>.png`` (mAP, rank-1 per epoch), ``clusters.png``, ``loss.png``."""
    out_dir = Path(out_dir)
    written = []
    for protocol in curve_protocols(records):
        path = plot_curves(
            records,
            [f"test.{protocol}.mAP", f"test.{protocol}.rank1"],
            out_dir / f"curves_{protocol}.png",
            title=f"Test {protocol} per epoch",
            ylabels=["mAP (%)", "rank-1 (%)"],
        )
        written.append(path)
    written.append(
        plot_curves(
            records,
            ["cluster.n_clusters", "cluster.n_unclustered"],
            out_dir / "clusters.png",
            title="Pseudo-labels per epoch",
            ylabels=["clusters", "un-clustered samples"],
        )
    )
    written.append(plot_curves(records, ["train.loss"], out_dir / "loss.png", title="Training loss", ylabels=["loss"]))
    return [p for p in written if p is not None]


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def plot_sweep(
    records: Sequence[RunRecord],
    key: str,
    out: str | Path,
    *,
    protocol: str | None = None,
    metrics: Sequence[str] = ("mAP", "rank1"),
) -> Path | None:
    """Metric vs a config key (e.g. ``eps``): mean ± std over seeds, one line per method/dataset.

    ``protocol`` default: the first protocol of the first record. Runs whose ``key`` is not a
    number are skipped. Returns ``None`` when fewer than two distinct values of ``key`` exist.
    """
    records = [r for r in table_records(records) if _numeric(r.flat_config.get(key)) is not None]
    if protocol is None:
        protocol = next((p for r in records for p in r.metrics), None)
    records = [r for r in records if protocol in r.metrics]
    if protocol is None or len({r.flat_config[key] for r in records}) < 2:
        return None
    fig, axes = _figure(len(metrics))
    lines: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
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
            label = f"{method_label(method)} / {DATASET_LABELS.get(dataset, dataset)}"
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, linewidth=1.4, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.15)
        ax.set_xlabel(key)
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%)")
        ax.set_title(f"{protocol} {METRIC_LABELS.get(metric, metric)} vs {key} (mean ± std over seeds)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, Path(out))
