"""Tables from Sacred runs: mean ± std with n, Δ vs published, bold/underline, Markdown/LaTeX/CSV."""

from __future__ import annotations

import csv
import io
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from report_runs import DATASET, SEEDS, expected, write_runs

from maskcl.report.published import PublishedRow, load_published
from maskcl.report.records import ReportError, RunRecord, filter_records
from maskcl.report.stores import read_dvc_exps, read_file_store
from maskcl.report.tables import (
    Column,
    ablation_table,
    main_table,
    render_csv,
    render_latex,
    render_markdown,
    setting_keys,
)

DVC_SAMPLE = Path(__file__).parent / "data" / "report_dvc_exp_show.json"


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[RunRecord]:
    from sacred.observers import FileStorageObserver

    root = tmp_path_factory.mktemp("sacred") / "runs"
    write_runs(lambda: FileStorageObserver(str(root)), with_train=False)
    return filter_records(read_file_store(root))


def _published() -> list[PublishedRow]:
    return [p for p in load_published() if p.dataset == DATASET]


def _fmt(mean: float, std: float, n: int) -> str:
    """A Markdown cell when every cell has the same n (said once, in the first footnote)."""
    return f"{mean:.1f} ± {std:.1f}"


def test_published_file_rows() -> None:
    rows = load_published()
    sicl = [r for r in rows if r.method == "SiCL"]
    assert {(r.protocol, r.metrics["rank1"], r.metrics["mAP"]) for r in sicl} == {("cc", 71.7, 63.9), ("standard", 87.9, 77.2)}
    assert all(r.quoted and "metric order" in r.note for r in rows)
    assert all(r.metrics["rank5"] is None and r.metrics["rank10"] is None for r in rows)


def test_published_file_validation(tmp_path: Path) -> None:
    bad = tmp_path / "p.csv"
    bad.write_text(
        "source,method,supervision,dataset,protocol,mAP,rank1,rank5,rank10,note\n"
        "arXiv:1,X,unsupervised,ltcc,cc,12.5,abc,,,\n"
    )
    with pytest.raises(ReportError, match="line 2 column rank1"):
        load_published(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text(
        "source,method,supervision,dataset,protocol,mAP,rank1,rank5,rank10,note\n"
        "arXiv:1 Table 2,X,supervised,ltcc,cc,–,40.1,,,\n"
    )
    (row,) = load_published(ok)
    assert row.metrics == {"mAP": None, "rank1": 40.1, "rank5": None, "rank10": None} and not row.quoted


def test_main_table_cells_mean_std_n(records: list[RunRecord]) -> None:
    table = main_table(records, _published())
    ours = {row.method: row for row in table.rows if row.kind == "ours"}
    assert set(ours) == {"maskcl", "rgb"}
    for method, row in ours.items():
        for protocol in ("cc", "standard"):
            for metric in ("mAP", "rank1"):
                mean, std, n = expected(method, protocol, metric)
                cell = row.cells[Column(DATASET, protocol, metric)]
                assert cell.value == pytest.approx(mean) and cell.std == pytest.approx(std) and cell.n == n == len(SEEDS)
    text = render_markdown(table)
    mean, std, n = expected("maskcl", "cc", "mAP")  # 62.0 ± 2.0 (n=3)
    assert _fmt(mean, std, n) in text
    mean, std, n = expected("rgb", "standard", "rank1")  # 89.0 ± 1.0 (n=3)
    assert _fmt(mean, std, n) in text


def test_main_table_delta_vs_published(records: list[RunRecord]) -> None:
    table = main_table(records, _published())
    deltas = [row for row in table.rows if row.kind == "delta"]
    # maskcl has a counterpart (SiCL, quoted); the third-party re-run and rgb do not
    assert len(deltas) == 1 and deltas[0].method == "maskcl"
    delta = deltas[0].cells
    assert delta[Column(DATASET, "cc", "mAP")].value == pytest.approx(expected("maskcl", "cc", "mAP")[0] - 63.9)
    assert delta[Column(DATASET, "standard", "rank1")].value == pytest.approx(expected("maskcl", "standard", "rank1")[0] - 87.9)
    text = render_markdown(table)
    assert f"{expected('maskcl', 'cc', 'mAP')[0] - 63.9:+.1f}" in text  # -1.9
    assert "SiCL [arXiv:2305.13600v2]†" in text
    assert "quoted by a third party" in text


def test_bold_and_underline_per_column(records: list[RunRecord]) -> None:
    table = main_table(records, _published())
    column = Column(DATASET, "cc", "mAP")
    # candidates: maskcl 62.0, rgb 42.0, SiCL quoted 63.9, third-party re-run 45.3
    emphasis = {row.label: row.cells[column].emphasis for row in table.rows if column in row.cells and row.kind != "delta"}
    best = [label for label, e in emphasis.items() if e == "best"]
    second = [label for label, e in emphasis.items() if e == "second"]
    assert best == ["SiCL [arXiv:2305.13600v2]†"] and second == ["MaskCL (ours)"]
    column = Column(DATASET, "standard", "mAP")  # rgb 80.0 best, SiCL 77.2 second, maskcl 76.0
    emphasis = {row.method: row.cells[column].emphasis for row in table.rows if column in row.cells and row.kind != "delta"}
    assert emphasis["rgb"] == "best" and emphasis["SiCL"] == "second" and emphasis["maskcl"] == ""
    md = render_markdown(table)
    assert f"**{_fmt(*expected('rgb', 'standard', 'mAP'))}**" in md
    assert "<u>77.2</u>" in md
    tex = render_latex(table)
    assert r"\textbf{80.0}{\scriptsize$\pm$1.0}" in tex and r"\underline{77.2}" in tex
    assert "over 3 seeds" in tex and "(3)" not in tex  # the seeds are said once, in the caption
    assert all(row.cells[c].emphasis == "" for row in table.rows if row.kind == "delta" for c in row.cells)


def test_missing_metric_shown_as_dash(records: list[RunRecord]) -> None:
    table = main_table(records, _published(), metrics=("mAP", "rank1", "rank5"))
    line = next(l for l in render_markdown(table).splitlines() if l.startswith("| SiCL"))
    assert "–" in line  # the published rows have no rank-5


def test_protocol_footnotes(records: list[RunRecord]) -> None:
    table = main_table(records, _published())
    notes = "\n".join(table.footnotes)
    assert "Protocol cc (clothes-changing)" in notes and "Protocol standard:" in notes
    assert "ddof=1" in notes


def test_csv_plain_numbers_std_n(records: list[RunRecord]) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(main_table(records, _published())))))
    line = next(r for r in rows if r["kind"] == "ours" and r["method"] == "rgb" and r["protocol"] == "cc" and r["metric"] == "rank1")
    mean, std, n = expected("rgb", "cc", "rank1")
    assert float(line["value"]) == pytest.approx(mean) and float(line["std"]) == pytest.approx(std) and int(line["n"]) == n
    pub = next(r for r in rows if r["kind"] == "published" and r["method"] == "SiCL" and r["protocol"] == "cc" and r["metric"] == "mAP")
    assert float(pub["value"]) == 63.9 and pub["std"] == "" and pub["n"] == "" and "quoted" in pub["note"]


def test_sweep_inside_sacred_goes_to_ablation(tmp_path: Path) -> None:
    from sacred.observers import FileStorageObserver

    root = tmp_path / "runs"
    write_runs(lambda: FileStorageObserver(str(root)), with_failed=False, with_train=False, extra_eps=0.7)
    records = filter_records(read_file_store(root))
    assert setting_keys(records) == ["eps"]
    table = main_table(records)
    cell = next(r for r in table.rows if r.method == "maskcl").cells[Column(DATASET, "cc", "mAP")]
    assert cell.n == 3 and cell.value == pytest.approx(expected("maskcl", "cc", "mAP")[0])  # the eps=0.6 runs
    assert any("eps=0.6" in note for note in table.footnotes)
    ablation = ablation_table(records)
    rows = {(r.method, r.keys["eps"]): r for r in ablation.rows}
    assert set(rows) == {("maskcl", 0.6), ("maskcl", 0.7), ("rgb", 0.6)}
    swept = rows[("maskcl", 0.7)].cells[Column(DATASET, "cc", "mAP")]
    assert swept.n == 2 and swept.value == pytest.approx((60.0 + 62.0) / 2 + 5.0)


def test_ablation_from_dvc_sample() -> None:
    from maskcl.report.records import deduplicate

    records = deduplicate(filter_records(read_dvc_exps(DVC_SAMPLE)))
    table = ablation_table(records)
    assert table is not None and table.key_names == ["eps"]  # seed varies too but is never a setting
    # the sample's stage writes standard mAP = 50 + 10·eps + seed:
    # eps 0.55 → seeds 1 and 2 (eps055, eps055b); eps 0.6 → seed 1 (baseline); eps 0.65 → seed 2
    by_eps = {row.keys["eps"]: row.cells[Column("synthetic", "standard", "mAP")] for row in table.rows}
    assert list(by_eps) == [0.55, 0.6, 0.65]
    assert by_eps[0.55].value == pytest.approx(57.0) and by_eps[0.55].n == 2
    assert by_eps[0.55].std == pytest.approx(math.sqrt(0.5))
    assert by_eps[0.6].value == pytest.approx(57.0) and by_eps[0.6].n == 1 and by_eps[0.6].std is None
    assert by_eps[0.65].value == pytest.approx(58.5) and by_eps[0.65].emphasis == "best"
    assert by_eps[0.55].emphasis == by_eps[0.6].emphasis == "second"  # equal as displayed (57.0)
    md = render_markdown(table)
    assert "| MaskCL   | 0.65  |" in md and "**58.5 (n=1)**" in md


def _compile(tex_body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    doc = tmp_path / "t.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n" + tex_body + "\n\\end{document}\n"
    )
    return subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not on PATH")
def test_latex_compiles_in_plain_article(records: list[RunRecord], tmp_path: Path) -> None:
    body = render_latex(main_table(records, _published()), label="tab:main")
    body += render_latex(ablation_table(filter_records(read_dvc_exps(DVC_SAMPLE))), label="tab:abl")
    done = _compile(body, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0


def test_report_package_never_imports_engine_sacred_dvc_or_torch() -> None:
    import ast

    import maskcl.report

    forbidden = ("maskcl.engine", "sacred", "dvc", "torch", "experiments")
    for path in Path(maskcl.report.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not on PATH")
def test_latex_escapes_special_characters(tmp_path: Path) -> None:
    records = [
        RunRecord(
            run_id=str(seed),
            source="sacred-file",
            experiment="maskcl_evaluate",
            status="COMPLETED",
            config={"seed": seed, "method": "rgb_only%&#", "dataset": {"name": "my_set~^"}},
            metrics={"weird_proto$": {"mAP": 10.0 + seed, "rank1": 20.0 + seed}},
        )
        for seed in (1, 2)
    ]
    tex = render_latex(main_table(records), label="tab:x")
    assert r"rgb\_only\%\&\#" in tex and r"weird\_proto\$" in tex
    done = _compile(tex, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:]


def test_reruns_of_one_configuration_count_once() -> None:
    """n counts seeds: the pipeline re-run with the same config and seed is a re-measurement."""
    from maskcl.report.records import RunRecord
    from maskcl.report.tables import table_records

    def run(run_id: str, seed: int, start: str, mAP: float) -> RunRecord:
        config = {"seed": seed, "method": "maskcl", "dataset": {"name": "ltcc"}}
        return RunRecord(run_id, "sacred-file", "maskcl_evaluate", "COMPLETED", config=config,
                         metrics={"cc": {"mAP": mAP}}, start_time=start)

    records = [run("1", 1, "2026-11-25T01:00:00", 10.0), run("2", 1, "2026-11-25T02:00:00", 12.0),
               run("3", 2, "2026-11-25T01:30:00", 11.0)]
    kept = table_records(records)
    assert sorted(r.run_id for r in kept) == ["2", "3"]


def test_reruns_differing_only_in_paths_count_once() -> None:
    from maskcl.report.records import RunRecord
    from maskcl.report.tables import table_records

    def run(run_id: str, root: str, start: str) -> RunRecord:
        config = {"seed": 1, "method": "maskcl", "dataset": {"name": "ltcc", "root": root}, "io": {"features": root}}
        return RunRecord(run_id, "sacred-file", "maskcl_evaluate", "COMPLETED", config=config,
                         metrics={"cc": {"mAP": 1.0}}, start_time=start)

    kept = table_records([run("1", "/a", "2026-11-25T01:00:00"), run("2", "/b", "2026-11-25T02:00:00")])
    assert [r.run_id for r in kept] == ["2"]


def test_oracle_label_runs_never_fill_an_ours_row() -> None:
    """A supervised-upper-bound run (cluster.oracle) must not be averaged into, or replace, the
    unsupervised rows even when it is the most-run setting; it stays visible in the ablation."""
    from maskcl.report.records import RunRecord

    def run(run_id: str, seed: int, oracle: str, mAP: float) -> RunRecord:
        config = {"seed": seed, "method": "maskcl", "dataset": {"name": "ltcc"}, "cluster": {"oracle": oracle}}
        return RunRecord(run_id, "sacred-file", "maskcl_evaluate", "COMPLETED", config=config,
                         metrics={"cc": {"mAP": mAP, "rank1": mAP}}, start_time=f"2026-11-25T0{seed}:00:00")

    records = [run("1", 1, "none", 10.0), run("2", 1, "identity", 50.0), run("3", 2, "identity", 52.0)]
    table = main_table(records)
    ours = next(r for r in table.rows if r.kind == "ours")
    cell = ours.cells[Column("ltcc", "cc", "mAP")]
    assert cell.n == 1 and cell.value == pytest.approx(10.0)
    assert any("cluster.oracle" in note for note in table.footnotes)
    ablation = ablation_table(records)
    assert {r.keys["cluster.oracle"] for r in ablation.rows} == {"none", "identity"}


def test_a_key_missing_from_an_older_run_counts_as_its_default() -> None:
    """A run recorded before cluster.oracle existed is the same setting as one stating 'none':
    no false sweep, and the newer run replaces the older re-measurement."""
    from maskcl.report.records import RunRecord

    old = RunRecord("1", "sacred-file", "maskcl_evaluate", "COMPLETED",
                    config={"seed": 1, "method": "maskcl", "dataset": {"name": "ltcc"}},
                    metrics={"cc": {"mAP": 1.0, "rank1": 1.0}}, start_time="2026-11-24T01:00:00")
    new = RunRecord("2", "sacred-file", "maskcl_evaluate", "COMPLETED",
                    config={"seed": 1, "method": "maskcl", "dataset": {"name": "ltcc"}, "cluster": {"oracle": "none"}},
                    metrics={"cc": {"mAP": 3.0, "rank1": 3.0}}, start_time="2026-11-25T01:00:00")
    assert old.flat_config["cluster.oracle"] == "none"
    assert setting_keys([old, new]) == []
    cell = next(r for r in main_table([old, new]).rows if r.kind == "ours").cells[Column("ltcc", "cc", "mAP")]
    assert cell.n == 1 and cell.value == pytest.approx(3.0)


CVPR_PAGE = (  # the geometry of the CVPR/ICCV author kit: 6.875in text, two 3.28in columns
    "\\documentclass[10pt,twocolumn,letterpaper]{article}\n"  # Computer Modern: wider than Times

    "\\usepackage[textwidth=6.875in,textheight=8.875in,columnsep=0.3125in,top=1in]{geometry}\n"
    "\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not on PATH")
def test_latex_tables_fit_one_column_of_a_cvpr_page(records: list[RunRecord], tmp_path: Path) -> None:
    body = render_latex(main_table(records, _published()), label="tab:main")
    body += render_latex(ablation_table(filter_records(read_dvc_exps(DVC_SAMPLE))), label="tab:abl")
    (tmp_path / "page.tex").write_text(CVPR_PAGE + body + "\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "page.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    log = (tmp_path / "page.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, log[log.find("Overfull"):][:400]
    assert "ltcc\\_cc\\_maskcl" not in body and "(n=3)" not in body
