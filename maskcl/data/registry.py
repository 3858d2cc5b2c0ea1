"""The dataset registry: name → loader ``load(root: Path) -> DatasetSplits``.

Loaders register themselves when their module in ``maskcl.data.datasets`` is imported;
:func:`maskcl.data.build_dataset` imports them all, so ``DATASETS.get("ltcc")`` fails with the
list of valid names rather than a bare ``KeyError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from maskcl.data.records import DatasetSplits
from maskcl.registry import Registry

Loader = Callable[[Path], DatasetSplits]

DATASETS: Registry[Loader] = Registry("dataset")
