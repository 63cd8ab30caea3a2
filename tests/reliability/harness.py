"""Shared machinery of the reliability trials: processes we own and can break (workers, gunicorn,
a private redis-server, TCP proxies in front of PostgreSQL and the S3 endpoint), the ledger audit
that decides whether anything was lost, and the recorder that feeds bench/reliability.py.

Nothing here touches the machine's own Redis or PostgreSQL beyond what the normal fixtures do:
faults are injected only into processes and sockets this module started.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
TRIALS = max(1, int(os.environ.get("RELIABILITY_TRIALS", "3")))
REPORT = os.environ.get("RELIABILITY_REPORT")  # JSON lines: one per fault / load run
GENEROUS = "100000 per minute"


def trials() -> int:
    return TRIALS


def rng() -> random.Random:
    """Random choices of the trials (kill points, sizes); RELIABILITY_SEED makes a run repeatable."""
    seed = os.environ.get("RELIABILITY_SEED")
    return random.Random(int(seed) if seed else None)


def record(kind: str, **fields) -> None:
    """Append one result to the report file (when bench/reliability.py asked for one)."""
    if not REPORT:
        return
    with open(REPORT, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


# ------------------------------------------------------------------------------ TCP proxy
class TcpProxy:
    """A loopback TCP forwarder we can take down and bring back on the same port.

    `stop()` closes the listening socket and cuts every open connection (what clients see when
    the server behind restarts); `start()` listens again. Plain threads, no dependencies.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int | None = None):
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.accepted = 0

    def start(self) -> "TcpProxy":
        if self._listener is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.listen(128)
        self._listener = sock
        threading.Thread(target=self._accept_loop, args=(sock,), daemon=True, name="proxy-accept").start()
        return self

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True, name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                for s in (src, dst):
                    if s in self._conns:
                        self._conns.discard(s)
                        s.close()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    @property
    def running(self) -> bool:
        return self._listener is not None


# ------------------------------------------------------------------------------ redis-server
def reap() -> None:
    """Kill every process a trial started and left running (a failed assertion skips its stop)."""
    while Proc.started:
        proc = Proc.started.pop()
        if proc.alive():
            proc.kill()
    for server in RedisServer.started[:]:
        server.kill()
        RedisServer.started.remove(server)


class RedisServer:
    """A private, memory-only redis-server on a free port (never the machine's own Redis)."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        RedisServer.started.append(self)

    started: list["RedisServer"] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        from redis import Redis

        conn = Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: _ping(conn), 15, 0.05, f"redis-server on {self.port}")
        finally:
            conn.close()
        return self

    def kill(self) -> None:
        """SIGKILL: everything in memory is gone (no RDB, no AOF)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()
        self.restarts += 1

    def dbsize(self) -> int:
        from redis import Redis

        conn = Redis(port=self.port)
        try:
            return int(conn.dbsize())
        finally:
            conn.close()


def _ping(conn) -> bool:
    try:
        return bool(conn.ping())
    except Exception:
        return False


# ------------------------------------------------------------------------------ processes
def process_env(cfg, tmp_path: Path, **extra) -> dict:
    """Environment for a web or worker subprocess sharing the test app's database, Redis,
    queues and storage (the pattern of tests/test_fairness.py)."""
    env = dict(os.environ)
    env.update({
        "TUNESMITH_ENV": "development", "DATABASE_URL": cfg.DATABASE_URL, "REDIS_URL": cfg.REDIS_URL,
        "RATELIMIT_STORAGE_URI": cfg.RATELIMIT_STORAGE_URI, "RATELIMIT_KEY_PREFIX": cfg.RATELIMIT_KEY_PREFIX,
        "QUEUE_NAME": cfg.QUEUE_NAME, "HIGH_QUEUE_NAME": cfg.HIGH_QUEUE_NAME, "STYLE_TRAIN_QUEUE": cfg.STYLE_TRAIN_QUEUE,
        "STORAGE_URL": cfg.STORAGE_URL,
        "ENGINE": "offline", "SECRET_KEY": cfg.SECRET_KEY, "VAR_DIR": str(tmp_path / "var"),
        "RECONCILE_INTERVAL": "0", "MAX_RUNNING_PER_USER": str(cfg.MAX_RUNNING_PER_USER),
        "JOB_TIMEOUT_BASE": str(cfg.JOB_TIMEOUT_BASE), "JOB_TIMEOUT_PER_SECOND": str(cfg.JOB_TIMEOUT_PER_SECOND),
        "NEW_USER_CREDITS": str(cfg.NEW_USER_CREDITS), "SIGNED_URL_TTL": str(cfg.SIGNED_URL_TTL),
        "LOGIN_RATE_LIMIT": cfg.LOGIN_RATE_LIMIT, "LOGIN_ACCOUNT_RATE_LIMIT": cfg.LOGIN_ACCOUNT_RATE_LIMIT,
        "REGISTER_RATE_LIMIT": cfg.REGISTER_RATE_LIMIT, "CREATE_RATE_LIMIT": cfg.CREATE_RATE_LIMIT,
        "API_RATE_LIMIT": cfg.API_RATE_LIMIT, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """A subprocess in its own session (so a signal reaches it and its children only), with its
    output in a log file."""

    started: list["Proc"] = []  # every one, so a failed test's teardown can reap them

    def __init__(self, argv: list[str], env: dict, log: Path):
        self.argv, self.log = argv, Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pid = self.proc.pid
        Proc.started.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 20) -> int | None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def stacks(self, wait: float = 1.0) -> str:
        """Every thread's stack of a worker that seems stuck (tests/reliability/worker.py has
        faulthandler dump them on SIGUSR1 into its log), then the log's tail."""
        if self.alive():
            self.signal(signal.SIGUSR1)
            time.sleep(wait)
        return self.tail(12000)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def spawn_worker(env: dict, log_dir: Path, name: str | None = None, burst: bool = False, **knobs) -> Proc:
    """The real GPU worker (`gpu_worker.main`) through tests/reliability/worker.py, whose
    RELIABILITY_* knobs make jobs slow or shorten the reconciler's waits."""
    name = name or f"rel-{secrets.token_hex(4)}"
    env = dict(env)
    env.update({k: str(v) for k, v in knobs.items()})
    argv = [sys.executable, "-m", "tests.reliability.worker", "--name", name] + (["--burst"] if burst else [])
    proc = Proc(argv, env, Path(log_dir) / f"worker-{name}.log")
    proc.name = name
    return proc


def worker_ready(redis_url: str, name: str) -> bool:
    """The worker writes its heartbeat once its engines are loaded (before the first job)."""
    from redis import Redis

    conn = Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        return bool(conn.exists(f"tunesmith:worker-heartbeat:{name}"))
    except Exception:
        return False
    finally:
        conn.close()


def spawn_gunicorn(env: dict, log_dir: Path, port: int, workers: int = 2, threads: int = 4,
                   graceful: int = 20, app: str = "tests.reliability.wsgi:create()") -> Proc:
    argv = [_bin("gunicorn"), app, "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--threads", str(threads), "--timeout", "60", "--graceful-timeout", str(graceful),
            "--no-control-socket", "--backlog", "512"]
    proc = Proc(argv, env, Path(log_dir) / f"gunicorn-{port}.log")
    try:
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz") or not proc.alive(), 60, 0.1,
                   "gunicorn to answer")
    except AssertionError:
        proc.kill()
        raise
    if not proc.alive():
        raise RuntimeError(f"gunicorn exited:\n{proc.tail()}")
    return proc


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except Exception:
        return False


def migrate(env: dict) -> None:
    subprocess.run([_bin("flask"), "--app", "app:create_app", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=120)


# ------------------------------------------------------------------------------ ledger audit
@dataclass
class Audit:
    """What the database says after a trial. `problems` names every song, generation or user
    whose work or credits went wrong; `lost` counts them."""

    users: int = 0
    generations: int = 0
    songs: int = 0
    processed: int = 0
    failed: int = 0
    unfinished: int = 0
    captures: int = 0
    releases: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.problems)

    def summary(self) -> str:
        if self.processed == self.failed == 0 and self.unfinished:  # a web-only trial: no worker ran
            return (f"{self.generations} generations, {self.songs} songs, all whole and reserved once "
                    f"(queued: no worker in this trial)")
        return (f"{self.generations} generations, {self.songs} songs: {self.processed} processed, "
                f"{self.failed} failed & released, {self.unfinished} unfinished")


def audit(final: bool = True, user_ids=None) -> Audit:
    """Check the ledger and the songs (call with the app's database connected).

    - every user: the ledger sums to the cached balance, which is never negative;
    - every generation: exactly one reserve of -variants, and `variants` songs;
    - every song: at most one settlement (`song:<id>:settle`), a capture (0) exactly when it is
      processed, a release (+1) exactly when it failed; with `final`, none is left unfinished.
    """
    import peewee as pw

    from core.songs import reserve_ref, settle_ref
    from models import CreditEntry, Generation, Song, User

    out = Audit()
    users = User.select()
    if user_ids is not None:
        users = users.where(User.id.in_(list(user_ids)))
    users = list(users)
    ids = [u.id for u in users]
    out.users = len(users)
    sums = {row.user_id: row.total for row in CreditEntry.select(
        CreditEntry.user, pw.fn.SUM(CreditEntry.delta).alias("total")).where(CreditEntry.user.in_(ids))
        .group_by(CreditEntry.user)}
    for user in users:
        if (sums.get(user.id) or 0) != user.credits:
            out.problems.append(f"user {user.email}: ledger sums to {sums.get(user.id)} but balance is {user.credits}")
        if user.credits < 0:
            out.problems.append(f"user {user.email}: negative balance {user.credits}")
    entries: dict[str, list] = {}
    for e in CreditEntry.select().where(CreditEntry.user.in_(ids)):
        entries.setdefault(e.ref, []).append(e)
    gens = list(Generation.select().where(Generation.user.in_(ids)))
    out.generations = len(gens)
    songs_by_gen: dict[str, list] = {}
    for s in Song.select().where(Song.user.in_(ids)):
        songs_by_gen.setdefault(s.generation_id, []).append(s)
    for gen in gens:
        reserve = entries.get(reserve_ref(gen.id), [])
        if len(reserve) != 1 or reserve[0].delta != -gen.variants:
            out.problems.append(f"generation {gen.id}: reserve entries {[e.delta for e in reserve]} "
                                f"for {gen.variants} variant(s)")
        if len(songs_by_gen.get(gen.id, [])) != gen.variants:
            out.problems.append(f"generation {gen.id}: {len(songs_by_gen.get(gen.id, []))} song(s) "
                                f"for {gen.variants} variant(s) (half-written)")
    for songs in songs_by_gen.values():
        for s in songs:
            out.songs += 1
            settle = entries.get(settle_ref(s.id), [])
            if s.status == "processed":
                out.processed += 1
                if [(e.kind, e.delta) for e in settle] != [("capture", 0)]:
                    out.problems.append(f"song {s.id} processed but settled {[(e.kind, e.delta) for e in settle]}")
                if not (s.audio_key and s.cover_key):
                    out.problems.append(f"song {s.id} processed without its files")
            elif s.status == "failed":
                out.failed += 1
                if [(e.kind, e.delta) for e in settle] != [("release", 1)]:
                    out.problems.append(f"song {s.id} failed but settled {[(e.kind, e.delta) for e in settle]}")
            else:
                out.unfinished += 1
                if settle:
                    out.problems.append(f"song {s.id} is {s.status} but already settled")
                if final:
                    out.problems.append(f"song {s.id} stuck in {s.status} ({s.stage})")
    out.captures = sum(1 for v in entries.values() for e in v if e.kind == "capture")
    out.releases = sum(1 for v in entries.values() for e in v if e.kind == "release")
    return out


def unfinished_count() -> int:
    from models import Song

    return Song.select().where(Song.status.not_in(Song.FINAL)).count()


def storage_orphans(storage, failed_song_ids, prefix_of) -> list[str]:
    """Objects left in storage under songs that failed (their rows point at no file)."""
    left = []
    for sid, prefix in ((sid, prefix_of(sid)) for sid in failed_song_ids):
        left.extend(storage.list(prefix))
    return left


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ------------------------------------------------------------------------------ HTTP
class Browser:
    """A signed-in person over real HTTP (requests), with the CSRF token of their session."""

    def __init__(self, base: str, email: str, password: str = "a quiet harbour at dawn", register: bool = True):
        import requests

        from tests.conftest import csrf_from

        self.base, self.s = base, requests.Session()
        path = "/auth/register" if register else "/auth/login"
        token = csrf_from(self.s.get(base + path, timeout=30).text)
        r = self.s.post(base + path, data={"email": email, "password": password, "csrf_token": token},
                        allow_redirects=False, timeout=30)
        assert r.status_code == 303, (r.status_code, r.text[:500])
        self.token = csrf_from(self.s.get(base + "/create", timeout=30).text)

    def create(self, key: str, timeout: float = 15, **headers):
        return self.s.post(self.base + "/create", data={
            "mode": "description", "description": f"song {key}", "duration": "10", "variants": "2",
            "idempotency_key": key, "csrf_token": self.token}, allow_redirects=False, timeout=timeout,
            headers=headers)
