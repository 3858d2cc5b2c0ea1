"""`maskcl data` (the DVC data stage): validates dataset.root with its loader and writes a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskcl.cli import main
from maskcl.data.synthetic import SynthSpec, generate_synthetic


def test_summary_counts_every_split(tmp_path: Path) -> None:
    spec = SynthSpec(identities=4, outfits=2, cameras=2, images_per=1, height=48, width=24)
    root = generate_synthetic(spec, tmp_path / "syn", progress=False)
    summary = tmp_path / "out" / "data.json"
    code = main(["data", "--set", f"dataset.root={root}", "--summary", str(summary)])
    assert code == 0
    data = json.loads(summary.read_text())
    assert data["dataset"] == "synthetic" and data["protocols"][0] == "cc"
    assert data["splits"]["train"] == {"images": 8, "ids": 2, "cameras": 2, "clothes": 4}
    assert data["splits"]["query"]["images"] + data["splits"]["gallery"]["images"] == 8


def test_malformed_file_name_fails_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = SynthSpec(identities=4, outfits=2, cameras=2, images_per=1, height=48, width=24)
    root = generate_synthetic(spec, tmp_path / "syn", progress=False)
    next((root / "train").glob("*.png")).rename(root / "train" / "person7.png")
    summary = tmp_path / "data.json"
    code = main(["data", "--set", f"dataset.root={root}", "--summary", str(summary)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "person7.png" in err and len(err.splitlines()) == 1
    assert not summary.exists()
