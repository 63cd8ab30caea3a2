"""What the benchmark scripts share: statistics, the machine's description, loopback-only
services (a fresh PostgreSQL database, Redis, moto's S3 server), processes and the table.

Everything here talks to 127.0.0.1 only: a URL naming any other host is refused.
"""
from __future__ import annotations

import math
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.helpers import free_port, wait_for_port  # noqa: E402  (one copy for tests and benchmarks)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


# ------------------------------------------------------------------------------ statistics
def pct(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    xs = list(values)
    return statistics.median(xs) if xs else math.nan


def ms(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds:.2f} s"


# ------------------------------------------------------------------------------ the machine
def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM, load average, Python: what a figure's reader needs to weigh it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = math.nan
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": nproc, "cpu": cpu, "ram_gib": round(ram_gib, 1), "load": loadavg(),
            "python": platform.python_version(), "os": f"{platform.system()} {platform.machine()}"}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------------------ services
def require_loopback(url: str, what: str) -> str:
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"{what} must be on loopback (127.0.0.1), not {host!r}: the benchmarks never "
                         f"reach another machine")
    return url


def _pg_url(dbname: str) -> str:
    p = urlparse(PG_ADMIN_URL)
    return p._replace(path=f"/{dbname}").geturl()


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_URL, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def postgres_version() -> str:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_URL, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return cur.fetchone()[0].split()[0]
    finally:
        conn.close()


class BenchDatabase:
    """A fresh PostgreSQL database (`tunesmith_bench_<pid>`), migrated; dropped by `drop()`."""

    def __init__(self, name: str | None = None):
        require_loopback(PG_ADMIN_URL, "BENCH_POSTGRES_URL")
        self.name = name or f"tunesmith_bench_{os.getpid()}"
        self.url = _pg_url(self.name)

    def create(self) -> "BenchDatabase":
        _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}"')
        _pg_admin(f'CREATE DATABASE "{self.name}"')
        import models
        from app.migrate import upgrade

        models.init_db(self.url, 4)
        models.db.connect(reuse_if_open=True)
        upgrade()
        models.db.close()
        return self

    def drop(self) -> None:
        import models

        try:
            if models.db.obj is not None:
                if not models.db.is_closed():
                    models.db.close()
                if hasattr(models.db.obj, "close_all"):
                    models.db.obj.close_all()
        except Exception:
            pass
        try:
            _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()")
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}"')
        except Exception as exc:  # leave it; the next run drops it by name
            print(f"  (could not drop database {self.name}: {exc})", file=sys.stderr)


def redis_version() -> str:
    from redis import Redis

    return str(Redis.from_url(REDIS_URL, socket_connect_timeout=2).info("server").get("redis_version", "?"))


class S3Server:
    """moto's S3 server over HTTP on a free loopback port (as the test suite runs it). Without
    moto installed, `url` stays a local file store and `kind` says so."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.url = f"file://{tmp / 'storage'}"
        self.kind = "local files"

    def start(self) -> "S3Server":
        try:
            import moto  # noqa: F401
        except ImportError:
            return self
        port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, timeout=30.0, proc=self.proc)
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        self.url = f"s3://benchkey:benchsecret@127.0.0.1:{port}/{bucket}?secure=false&region=us-east-1"
        self.kind = "S3 (moto server on loopback)"
        return self

    def stop(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """Terminate a process this script started (by its own handle), then kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Settings:
    """The settings every process of one bench run shares (passed as environment variables)."""

    database_url: str
    storage_url: str
    var_dir: Path
    redis_url: str = REDIS_URL
    tag: str = field(default_factory=lambda: f"bench-{secrets.token_hex(4)}")
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def env(self, **extra: Any) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("ENGINE_MUSIC", "ENGINE_WRITER", "ENGINE_COVER"):
            env.pop(key, None)
        env.update(
            TUNESMITH_ENV="development", SECRET_KEY=self.secret_key, DATABASE_URL=self.database_url,
            DATABASE_POOL_SIZE="10", REDIS_URL=self.redis_url, RATELIMIT_STORAGE_URI=self.redis_url,
            RATELIMIT_KEY_PREFIX=f"{self.tag}-rl", STORAGE_URL=self.storage_url, VAR_DIR=str(self.var_dir),
            QUEUE_NAME=self.tag, HIGH_QUEUE_NAME=f"{self.tag}-high", STYLE_TRAIN_QUEUE=f"{self.tag}-train",
            METRICS_PREFIX=f"tunesmith:metrics:{self.tag}",
            ENGINE="offline", LOG_LEVEL="WARNING", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1", NEW_USER_CREDITS="0", TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error",
            MIN_DURATION="1",  # the quick run renders 2 s songs; the full run uses 10 s and more
        )
        env.update({k: str(v) for k, v in extra.items() if v is not None})
        return env

    def config(self, **overrides: Any):
        """A Config for this process built from the same environment the child processes get."""
        from config import Config

        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env(**{k: v for k, v in overrides.items()}))
            return Config()
        finally:
            os.environ.clear()
            os.environ.update(saved)


# ------------------------------------------------------------------------------ output
@dataclass
class Row:
    figure: str
    what: str
    value: str
    goal: str = ""
    verdict: str = ""  # "met", "missed" or "" (no goal)


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def table(rows: list[Row]) -> str:
    heads = ("fig", "what", "value", "goal", "")
    cols = [[r.figure for r in rows], [r.what for r in rows], [r.value for r in rows], [r.goal for r in rows],
            [r.verdict for r in rows]]
    widths = [max([len(h)] + [len(c) for c in col]) for h, col in zip(heads, cols)]
    line = " | ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()
    out = [line, "-" * len(line)]
    last = None
    for r in rows:
        cells = [r.figure if r.figure != last else "", r.what, r.value, r.goal, r.verdict]
        last = r.figure
        out.append(" | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
