"""Browser fixtures: the real stack (gunicorn + GPU worker with the offline engines) once per
session, and Debian's Chromium through Playwright. Every test here is marked `browser`; without
/usr/bin/chromium (scripts/test installs it with apt) they are skipped with the reason."""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import pytest

from tests.browser.stack import CHROMIUM, Stack, launch_browser

HERE = Path(__file__).resolve().parent
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return (f"Chromium is not installed at {CHROMIUM} "
                "(scripts/test installs it: apt-get install chromium fonts-dejavu-core)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _postgres_database():
    """A fresh PostgreSQL database when the test server answers, else None (SQLite then)."""
    try:
        from tests.conftest import _pg_admin, _pg_url

        name = f"tunesmith_browser_{os.getpid()}_{secrets.token_hex(3)}"
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception:
        return None, None
    return name, _pg_url(name)


def _redis_url() -> str:
    """BROWSER_REDIS_URL, else the test Redis (TEST_REDIS_URL) on database 14."""
    if os.environ.get("BROWSER_REDIS_URL"):
        return os.environ["BROWSER_REDIS_URL"]
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    return re.sub(r"/\d*$", "", base.split("?")[0]) + "/14"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Migrated database, gunicorn (2 workers) and the GPU worker, torn down after the session."""
    tmp = tmp_path_factory.mktemp("stack")
    db_name, db_url = (None, None)
    if os.environ.get("BROWSER_DB", "postgres") == "postgres":
        db_name, db_url = _postgres_database()
    s = Stack(tmp, database_url=db_url, redis_url=_redis_url())
    s.start()
    try:
        yield s
    finally:
        s.stop()
        if db_name:
            from tests.conftest import _pg_admin

            try:
                _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db_name}' "
                          "AND pid <> pg_backend_pid()")
                _pg_admin(f'DROP DATABASE IF EXISTS "{db_name}"')
            except Exception:
                pass


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture
def new_context(browser, stack):
    """Factory for isolated browser contexts (own cookies) at a given viewport."""
    made = []

    def make(viewport=DESKTOP, **kwargs):
        ctx = browser.new_context(viewport=viewport, base_url=stack.url, **kwargs)
        ctx.set_default_timeout(15_000)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()
