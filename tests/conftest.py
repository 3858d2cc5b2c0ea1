"""Shared pytest fixtures.

``mongo_server`` (session-scoped): a MongoDB-wire server on 127.0.0.1 (nx-27017, or a real mongod
when ``MASKCL_TEST_MONGO_URL`` is set); see ``tests/mongo_fixture.py``. Tests using it are marked
``@pytest.mark.mongo``.
"""

from __future__ import annotations

try:  # tests/ as a package (python -m pytest from the repo root)
    from tests.mongo_fixture import mongo_server  # noqa: F401
except ImportError:  # rootdir-less import mode: tests/ itself is on sys.path
    from mongo_fixture import mongo_server  # noqa: F401
