"""flaskr-style fixtures on real services: PostgreSQL and SQLite, Redis, an S3 endpoint (moto's
server over HTTP). Every test that takes `app` runs once per database backend."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, wait_for_port  # noqa: E402

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _worker_redis_url(url: str) -> str:
    """Under pytest-xdist each process gets its own Redis database (15, 13, 12, ...; the browser
    stack has 14): the app fixture resets the rate-limit counters of its database per test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    m = re.fullmatch(r"gw(\d+)", worker)
    base = re.fullmatch(r"(redis://[^/?]+)/(\d+)", url)
    if not m or not base or int(m.group(1)) == 0:
        return url
    taken = {int(base.group(2)), 14}
    free = [n for n in range(15, -1, -1) if n not in taken]
    return f"{base.group(1)}/{free[(int(m.group(1)) - 1) % len(free)]}"


REDIS_URL = _worker_redis_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
os.environ["TEST_REDIS_URL"] = REDIS_URL  # the trials' own processes and bench/run use the same one
BACKENDS = [b for b in os.environ.get("TEST_BACKENDS", "sqlite,postgres").split(",") if b]


# ---------------------------------------------------------------------------- services
def _pg_url(dbname: str) -> str:
    return re.sub(r"/[^/?]*(\?|$)", f"/{dbname}\\1", PG_ADMIN_URL, count=1) if PG_ADMIN_URL.count("/") >= 3 else PG_ADMIN_URL


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def postgres_db():
    """A fresh PostgreSQL database for this test session, migrated once."""
    name = f"tunesmith_test_{os.getpid()}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}"')
    _pg_admin(f'CREATE DATABASE "{name}"')
    url = _pg_url(name)
    yield url
    import models

    if models.db.obj is not None and not models.db.is_closed():
        models.db.close()
    try:
        models.db.obj.close_all()
    except Exception:
        pass
    _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def redis_conn():
    from redis import Redis

    conn = Redis.from_url(REDIS_URL)
    conn.ping()
    # No FLUSHDB: every test names its own queues and keys, and other test sessions may share
    # this database at the same time.
    yield conn


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over real HTTP on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield {"endpoint": f"127.0.0.1:{port}", "port": port, "proc": proc}
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_url(s3_server):
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    return f"s3://testkey:testsecret@{s3_server['endpoint']}/{bucket}?secure=false&region=us-east-1"


# ---------------------------------------------------------------------------- app
def _reset_postgres(url: str) -> None:
    import models

    tables = [m._meta.table_name for m in models.ALL_MODELS]
    models.db.execute_sql("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    tiers = models.db.execute_sql("SELECT relname FROM pg_class WHERE relkind = 'i' "
                                  "AND relname ~ '^song_(search|title)_t[0-9]+_[0-9]+$'").fetchall()
    for (name,) in tiers:  # search's tiers, built by a test's feed refresh (core.search.maintain_tiers)
        models.db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')


_pg_migrated: set[str] = set()


def make_app(backend: str, tmp_path: Path, request, **overrides):
    from app import create_app
    from app.migrate import upgrade
    from config import TestConfig

    import models

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        url = request.getfixturevalue("postgres_db")
    request.getfixturevalue("redis_conn")
    settings = dict(DATABASE_URL=url, REDIS_URL=REDIS_URL, RATELIMIT_STORAGE_URI=REDIS_URL,
                    VAR_DIR=tmp_path / "var", STORAGE_URL=f"file://{tmp_path / 'storage'}")
    settings.update(overrides)
    app = create_app(TestConfig(**settings))
    from app.extensions import limiter

    with app.app_context():
        limiter.reset()
        models.db.connect(reuse_if_open=True)
        if backend == "postgres" and url in _pg_migrated:
            _reset_postgres(url)
        else:
            upgrade()
            _pg_migrated.add(url) if backend == "postgres" else None
        models.db.close()
    app.backend = backend
    return app


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


# Tests that start their own servers and workers, or measure: under pytest-xdist they run in
# order on one process (`--dist loadgroup`), so a trial never competes with another trial.
SERIAL = ("tests/reliability/", "tests/browser/", "tests/test_bench.py", "tests/ml/test_bench.py")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """A test marked `sqlite_only` runs on SQLite alone: its subject is not the database (the
    code paths that differ by database keep both backends), and the suite stays short."""
    keep, dropped = [], []
    for item in items:
        where = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        if any(where.startswith(s) for s in SERIAL):
            item.add_marker(pytest.mark.xdist_group("serial"))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (params.get("backend") == "postgres" and item.get_closest_marker("sqlite_only")
                and not item.get_closest_marker("both_backends")):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def app_overrides():
    """Override in a test module to change settings for `app`."""
    return {}


@pytest.fixture
def app(backend, tmp_path, request, app_overrides):
    app = make_app(backend, tmp_path, request, **app_overrides)
    yield app
    import models

    if not models.db.is_closed():
        models.db.close()


@pytest.fixture
def client(app):
    return app.test_client()


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'<meta name="csrf-token" content="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


class AuthActions:
    def __init__(self, client):
        self.client = client

    def csrf(self, path: str = "/auth/login") -> str:
        return csrf_from(self.client.get(path).get_data(as_text=True))

    def register(self, email="alice@example.com", password="correct horse", name="Alice"):
        token = self.csrf("/auth/register")
        return self.client.post("/auth/register", data={"email": email, "password": password, "name": name,
                                                         "csrf_token": token})

    def login(self, email="alice@example.com", password="correct horse"):
        token = self.csrf("/auth/login")
        return self.client.post("/auth/login", data={"email": email, "password": password, "csrf_token": token})

    def logout(self):
        token = self.csrf("/")
        return self.client.post("/auth/logout", data={"csrf_token": token})

    def post(self, path, data=None, **kwargs):
        """POST like a browser form: with the page's CSRF token."""
        data = dict(data or {})
        data.setdefault("csrf_token", self.csrf("/"))
        return self.client.post(path, data=data, **kwargs)


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def db(app):
    """The app's database connected for direct model access inside a test."""
    import models

    with app.app_context():
        models.db.connect(reuse_if_open=True)
        yield models.db
        if not models.db.is_closed():
            models.db.close()
