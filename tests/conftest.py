"""Shared pytest fixtures.

``mongo_server`` (session-scoped): a MongoDB-wire server on 127.0.0.1 (nx-27017, or a real mongod
when ``MASKCL_TEST_MONGO_URL`` is set); see ``tests/mongo_fixture.py``. Tests using it are marked
``@pytest.mark.mongo``.

``tiny_tree`` (per module): the tiny LTCC-named image tree with masks of
:func:`tests.engine_fixtures.make_tiny_tree`; ``tiny_engine``: the same with the trainer pointed
at it (:func:`tests.engine_fixtures.patch_collaborators`), for end-to-end engine runs.
"""

from __future__ import annotations

try:  # tests/ as a package (python -m pytest from the repo root)
    from tests.engine_fixtures import make_tiny_tree, patch_collaborators
    from tests.mongo_fixture import mongo_server  # noqa: F401
except ImportError:  # rootdir-less import mode: tests/ itself is on sys.path
    from engine_fixtures import make_tiny_tree, patch_collaborators
    from mongo_fixture import mongo_server  # noqa: F401


import logging

import pytest


@pytest.fixture(autouse=True)
def _library_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process Sacred run (experiments.config.setup_logging) stops the `maskcl` and
    `experiments` loggers propagating to the root, Sacred's `--loglevel` raises the root level, and
    a logging dictConfig may disable existing loggers; tests that read caplog must not depend on
    which test ran first."""
    # Sacred's `--loglevel` (run in module-scoped fixtures too) sets the root logger's level:
    # every test starts from logging's default, WARNING
    monkeypatch.setattr(logging.root, "level", logging.WARNING)
    for name in ("maskcl", "experiments"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    # a dictConfig elsewhere in the process (disable_existing_loggers) may have disabled them
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.split(".")[0] in ("maskcl", "experiments") and isinstance(logger, logging.Logger):
            monkeypatch.setattr(logger, "disabled", False)


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_tree(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def tiny_engine(tiny_tree, monkeypatch: pytest.MonkeyPatch):
    splits, mask_root = tiny_tree
    patch_collaborators(monkeypatch, splits)
    return splits, mask_root
