"""DESIGN §2: the library never imports Sacred, DVC or experiments/; report never imports the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import maskcl

LIBRARY = Path(maskcl.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_sacred_dvc_or_experiments() -> None:
    offenders = {
        str(path.relative_to(LIBRARY)): sorted(
            name for name in imported_modules(path) if name.split(".")[0] in {"sacred", "dvc", "experiments"}
        )
        for path in LIBRARY.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_report_never_imports_the_engine() -> None:
    offenders = {
        str(path.relative_to(LIBRARY)): sorted(
            name for name in imported_modules(path) if name.startswith(("maskcl.engine", "maskcl.models"))
        )
        for path in (LIBRARY / "report").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
