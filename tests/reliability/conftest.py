"""Fixtures of the reliability trials (`pytest -m reliability`, or `pytest tests/reliability`).

RELIABILITY_TRIALS (default 3) sets how often each fault is repeated; bench/reliability.py runs
the same tests with a larger N and prints the table of docs/reliability.md.
"""
from __future__ import annotations

import pytest

import models
from tests.conftest import make_app
from tests.reliability import harness


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def trials() -> int:
    return harness.trials()


@pytest.fixture
def app_factory(tmp_path, request):
    """make(backend="postgres", **settings) -> a migrated app on a clean database (one at a time:
    the database handle is process-wide)."""

    def make(backend: str = "postgres", **overrides):
        return make_app(backend, tmp_path, request, **overrides)

    yield make
    if models.db.obj is not None and not models.db.is_closed():
        models.db.close()


@pytest.fixture(autouse=True)
def _reap_processes():
    yield
    harness.reap()
