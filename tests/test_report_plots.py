"""Figures (curves, sweep, retrieval picture) and the `maskcl report` / `maskcl visualize` commands."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from report_runs import write_runs

from maskcl.report.plots import plot_sweep, plot_training
from maskcl.report.records import ReportError, filter_records
from maskcl.report.stores import read_dvc_exps, read_file_store
from maskcl.errors import FeaturesError
from maskcl.report.visualize import (
    GREEN,
    RED,
    Item,
    choose_queries,
    distance_matrix,
    load_features,
    ranked_gallery,
    save_features,
    save_retrieval_figure,
)

DVC_SAMPLE = Path(__file__).parent / "data" / "report_dvc_exp_show.json"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sacred.observers import FileStorageObserver

    root = tmp_path_factory.mktemp("sacred") / "runs"
    write_runs(lambda: FileStorageObserver(str(root)), with_failed=False)
    return root


def assert_real_png(path: Path, min_colours: int = 8) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 1.0  # not a blank image
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= min_colours
    return pixels


def test_training_curves_and_clusters(store: Path, tmp_path: Path) -> None:
    written = plot_training(filter_records(read_file_store(store)), tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["clusters.png", "curves_cc.png", "loss.png"]
    for path in written:
        assert_real_png(path)


def test_no_curves_no_file(tmp_path: Path) -> None:
    records = filter_records(read_dvc_exps(DVC_SAMPLE))  # DVC records carry no curves
    assert plot_training(records, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_sweep_plot(tmp_path: Path) -> None:
    records = filter_records(read_dvc_exps(DVC_SAMPLE))
    path = plot_sweep(records, "eps", tmp_path / "sweep_eps.png", protocol="cc")
    assert path is not None
    assert_real_png(path)
    assert plot_sweep(records, "k1", tmp_path / "k1.png") is None  # one value only: no sweep


# ---------------------------------------------------------------------------------------------
# retrieval picture
# ---------------------------------------------------------------------------------------------


def _items(tmp_path: Path):
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200), (90, 90, 90)]
    paths = []
    for i, colour in enumerate(colours):
        array = np.clip(np.array(colour) + rng.integers(-20, 20, size=(32, 16, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / "img" / f"{i:02d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(path)
        paths.append(path)
    # query 0: pid 1, cam 0, clothes 10; query 1: pid 2, cam 1, clothes 20
    query = [Item(paths[0], 1, 0, 10), Item(paths[1], 2, 1, 20)]
    gallery = [
        Item(paths[2], 1, 0, 11),  # same pid, same cam: excluded (standard)
        Item(paths[3], 1, 1, 10),  # same pid, other cam, same clothes: kept (standard), excluded (cc)
        Item(paths[4], 3, 0, 30),  # wrong identity
        Item(paths[5], 1, 2, 12),  # same pid, other cam, other clothes
        Item(paths[6], 2, 2, 21),
    ]
    q_feats = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    g_feats = np.array([[1.0, 0.05, 0.0], [1.0, 0.2, 0.0], [1.0, 0.3, 0.1], [0.6, 0.5, 0.1], [0.1, 1.0, 0.2]], dtype=np.float32)
    return query, gallery, q_feats, g_feats


def _plain_distance(q: np.ndarray, g: np.ndarray) -> float:
    qn = q / math.sqrt(float(np.sum(q * q)))
    gn = g / math.sqrt(float(np.sum(g * g)))
    return float(np.sum((qn - gn) ** 2))


def test_distance_and_ranking_match_plain_rule(tmp_path: Path) -> None:
    query, gallery, q_feats, g_feats = _items(tmp_path)
    dist = distance_matrix(q_feats, g_feats)
    for i in range(2):
        for j in range(5):
            assert dist[i, j] == pytest.approx(_plain_distance(q_feats[i], g_feats[j]), abs=1e-6)
    # by hand: order of gallery for query 0 by distance is 0, 1, 2, 3, 4
    assert list(np.argsort(dist[0])) == [0, 1, 2, 3, 4]
    assert ranked_gallery(dist[0], query[0], gallery, 10, "standard") == [1, 2, 3, 4]
    assert ranked_gallery(dist[0], query[0], gallery, 10, "cc") == [2, 3, 4]
    assert ranked_gallery(dist[0], query[0], gallery, 2, "none") == [0, 1]


def test_features_npz_round_trip(tmp_path: Path) -> None:
    query, gallery, q_feats, g_feats = _items(tmp_path)
    path = save_features(tmp_path / "feats.npz", q_feats, g_feats, query, gallery, root=tmp_path)
    data = np.load(path, allow_pickle=False)  # plain arrays only
    assert str(data["query_paths"][0]) == "img/00.jpg" and str(data["format"]) == "maskcl-features-v1"
    loaded = load_features(path)
    assert loaded.query == query and loaded.gallery == gallery
    np.testing.assert_array_equal(loaded.gallery_feats, g_feats)
    broken = tmp_path / "broken.npz"
    np.savez(broken, query_feats=q_feats)
    with pytest.raises(FeaturesError, match="missing array"):
        load_features(broken)


def test_retrieval_picture_has_green_and_red_frames(tmp_path: Path) -> None:
    query, gallery, q_feats, g_feats = _items(tmp_path)
    features = save_features(tmp_path / "feats.npz", q_feats, g_feats, query, gallery, root=tmp_path)
    out = save_retrieval_figure(load_features(features), [0, 1], tmp_path / "rank.png", topk=4)
    pixels = assert_real_png(out)

    def count(hex_colour: str) -> int:
        rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int(np.sum(np.all(np.abs(pixels.astype(int) - rgb) <= 8, axis=-1)))

    assert count(GREEN) > 50 and count(RED) > 50


def test_choose_queries() -> None:
    assert choose_queries("3,1", 5) == [3, 1]
    assert choose_queries("=4", 5) == [4]
    picked = choose_queries("3", 10, seed=1)
    assert len(set(picked)) == 3 and picked == choose_queries("3", 10, seed=1)
    with pytest.raises(ReportError, match="out of range"):
        choose_queries("7,8", 5)


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def test_report_command_writes_tables_and_plots(store: Path, tmp_path: Path, capsys) -> None:
    from maskcl.cli import main

    out = tmp_path / "results"
    code = main(["report", "--runs", str(store), "--dvc-exp", str(DVC_SAMPLE), "--out", str(out), "--tag", "paper"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "MaskCL (ours)" in printed and "over 3 runs (seeds)" in printed and "SiCL [arXiv:2305.13600v2]†" in printed
    for name in ("main.md", "main.tex", "main.csv", "ablation.md", "ablation.tex", "ablation.csv"):
        assert (out / "tables" / name).stat().st_size > 0
    assert "eps" in (out / "tables" / "ablation.md").read_text()
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["clusters.png", "curves_cc.png", "loss.png", "sweep_eps.png"]
    for name in plots:
        assert_real_png(out / "plots" / name)
        assert (out / "plots" / name).with_suffix(".pdf").read_bytes().startswith(b"%PDF")


def test_report_command_filters_and_no_published(store: Path, tmp_path: Path, capsys) -> None:
    from maskcl.cli import main

    code = main(["report", "--runs", str(store), "--out", str(tmp_path), "--method", "rgb", "--no-published"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "RGB-only (ours)" in printed and "MaskCL (ours)" not in printed and "SiCL" not in printed
    assert not (tmp_path / "tables" / "ablation.md").exists()


def test_report_command_error_is_one_line(tmp_path: Path, capsys) -> None:
    from maskcl.cli import main

    code = main(["report", "--runs", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskcl report: error:") and "none" in err and "\n" not in err


def test_visualize_command(tmp_path: Path) -> None:
    from maskcl.cli import main

    query, gallery, q_feats, g_feats = _items(tmp_path)
    features = save_features(tmp_path / "feats.npz", q_feats, g_feats, query, gallery, root=tmp_path)
    out = tmp_path / "vis.png"
    assert main(["visualize", "--features", str(features), "--queries", "0,1", "--topk", "3", "--out", str(out)]) == 0
    assert_real_png(out)
