"""The saved-features file written by the evaluate step and read by `maskcl visualize`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskcl.data.records import Record
from maskcl.errors import FeaturesError
from maskcl.eval.features import FORMAT, load_features, save_features


def records(root: Path, n: int, offset: int) -> list[Record]:
    return [Record(root / f"img/{offset + i:03d}.png", pid=i % 3, clothes_id=i, camid=i % 2) for i in range(n)]


def test_round_trip_keeps_features_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    query, gallery = records(tmp_path, 4, 0), records(tmp_path, 6, 100)
    q, g = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    path = save_features(tmp_path / "f.npz", q, g, query, gallery, root=tmp_path)
    with np.load(path, allow_pickle=False) as data:  # plain arrays: no pickle needed to read it
        assert str(data["format"]) == FORMAT and str(data["query_paths"][0]) == "img/000.png"
    loaded = load_features(path)
    np.testing.assert_array_equal(loaded.query_feats, q)
    np.testing.assert_array_equal(loaded.gallery_feats, g)
    assert [(i.path, i.pid, i.camid, i.clothes_id) for i in loaded.gallery] == [
        (r.path, r.pid, r.camid, r.clothes_id) for r in gallery
    ]


def test_count_mismatch_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FeaturesError, match="3 query features for 4 records"):
        save_features(tmp_path / "f.npz", np.zeros((3, 2)), np.zeros((6, 2)), records(tmp_path, 4, 0), records(tmp_path, 6, 9))
    with pytest.raises(FeaturesError, match="does not exist"):
        load_features(tmp_path / "absent.npz")


def test_evaluation_results_read_as_a_table_not_a_dict() -> None:
    from maskcl.eval.summary import format_line, format_metrics

    metrics = {"cc": {"mAP": 1.9554303732260252, "rank1": 1.11, "n_queries": 90, "n_skipped": 2},
               "standard": {"mAP": 8.5, "rank1": 33.3, "n_queries": 90, "n_skipped": 0}}
    table = format_metrics(metrics)
    assert "{" not in table and "1.96" in table and "90 (2 skipped)" in table
    assert table.splitlines()[0].split() == ["protocol", "mAP", "R-1", "queries"]
    assert format_line(metrics["standard"]) == "mAP 8.50, R-1 33.30 (90 queries)"
