"""Dataset records, loaders and the loader registry.

``build_dataset(name, root)`` is the one entry point the engine and the CLI use. Importing this
package imports the loader modules (pure Python: no torch) so that they register.
"""

from __future__ import annotations

from pathlib import Path

from maskcl.data.records import DatasetSplits, Record, mask_path_for, relabel
from maskcl.data.registry import DATASETS

# imported for their registration side effect
from maskcl.data.datasets import celebreid, deepchange, ltcc, market1501, prcc, vcclothes  # noqa: F401,E402

__all__ = ["DATASETS", "DatasetSplits", "Record", "build_dataset", "mask_path_for", "relabel"]


def build_dataset(name: str, root: str | Path) -> DatasetSplits:
    """Load dataset ``name`` (a registry key, e.g. ``ltcc``) from ``root``.

    Raises :class:`maskcl.errors.ConfigError` for an unknown name (listing the valid ones) and
    :class:`maskcl.errors.DatasetError` for a malformed folder.
    """
    return DATASETS.get(name)(Path(root).expanduser())
