"""The whole Tunesmith stack as real processes, for the browser tests and scripts/screenshots.py:
`flask db upgrade`, gunicorn serving `app:create_app()` on a free loopback port, and
`python gpu_worker.py` (offline engines) on the same database, Redis and storage.

    with Stack(tmp_dir) as stack:        # SQLite file + file:// storage under tmp_dir
        stack.url                         # http://127.0.0.1:<port>
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
GENEROUS = "10000 per minute"


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment (.venv/bin/<name>)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def launch_browser(playwright):
    """Debian's Chromium, headless, without the network chatter of a fresh profile."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


class Stack:
    """Web (gunicorn, N workers) + GPU worker (offline engines) as subprocesses."""

    def __init__(self, tmp_dir: Path, *, database_url: str | None = None, storage_url: str | None = None,
                 redis_url: str | None = None, web_workers: int = 2, extra_env: dict | None = None):
        self.tmp = Path(tmp_dir)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.web_workers = web_workers
        self.queue = f"browser-{secrets.token_hex(4)}"
        self.worker_name = f"{self.queue}-worker"
        self.env = dict(os.environ)
        self.env.update({
            "TUNESMITH_ENV": "development",
            "SECRET_KEY": secrets.token_urlsafe(32),
            "VAR_DIR": str(self.tmp / "var"),
            "DATABASE_URL": database_url or f"sqlite:///{self.tmp / 'tunesmith.db'}",
            "REDIS_URL": redis_url or os.environ.get("BROWSER_REDIS_URL", "redis://127.0.0.1:6379/14"),
            "STORAGE_URL": storage_url or f"file://{self.tmp / 'storage'}",
            "ENGINE": "offline",
            "QUEUE_NAME": self.queue,
            "HIGH_QUEUE_NAME": f"{self.queue}-high",
            "RATELIMIT_KEY_PREFIX": f"{self.queue}-rl",
            "LOGIN_RATE_LIMIT": GENEROUS, "LOGIN_ACCOUNT_RATE_LIMIT": GENEROUS,
            "REGISTER_RATE_LIMIT": GENEROUS, "CREATE_RATE_LIMIT": GENEROUS, "API_RATE_LIMIT": GENEROUS,
            "MAX_RUNNING_PER_USER": "4",
            "RECONCILE_INTERVAL": "0",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        })
        self.env.pop("RATELIMIT_STORAGE_URI", None)
        if extra_env:
            self.env.update(extra_env)
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, Path] = {}

    # ------------------------------------------------------------------ lifecycle
    def migrate(self) -> None:
        subprocess.run([_bin("flask"), "--app", "app:create_app", "db", "upgrade"], cwd=ROOT, env=self.env,
                       check=True, stdout=subprocess.DEVNULL, timeout=120)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.tmp / f"{name}.log"
        self._logs[name] = log
        with open(log, "wb") as fh:
            self.procs[name] = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start(self) -> "Stack":
        self.migrate()
        self._spawn("web", [_bin("gunicorn"), "app:create_app()", "--bind", f"127.0.0.1:{self.port}",
                            "--workers", str(self.web_workers), "--timeout", "60", "--graceful-timeout", "2",
                            "--no-control-socket"])
        self._spawn("worker", [sys.executable, "gpu_worker.py", "--name", self.worker_name])
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(self.url + "/auth/login", timeout=2) as resp:
                    if resp.status == 200 and self._worker_alive():
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the stack did not come up in {timeout:.0f} s:\n{self.log_tail('web')}\n"
                           f"{self.log_tail('worker')}")

    def _worker_alive(self) -> bool:
        """The worker writes a heartbeat key once its engines are loaded (before the first job)."""
        from redis import Redis

        conn = Redis.from_url(self.env["REDIS_URL"])
        try:
            return bool(conn.exists(f"tunesmith:worker-heartbeat:{self.worker_name}"))
        finally:
            conn.close()

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self._logs.get(name)
        if not path or not path.exists():
            return f"({name}: no log)"
        return f"--- {name} log ---\n" + path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        for name in ("worker", "web"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._clean_redis()

    def _clean_redis(self) -> None:
        try:
            from redis import Redis

            conn = Redis.from_url(self.env["REDIS_URL"])
            for pattern in (f"*{self.queue}*",):
                keys = list(conn.scan_iter(pattern))
                if keys:
                    conn.delete(*keys)
            conn.close()
        except Exception:
            pass

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self) -> "Client":
        return Client(self.url)

    def stop_worker(self) -> None:
        """Stop only the GPU worker (songs submitted afterwards stay queued)."""
        proc = self.procs.get("worker")
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)

    # ------------------------------------------------------------------ direct data access
    def models(self):
        """`models` connected to the stack's database, for seeding and checks from the test
        process (the web and worker processes stay the only ones that serve)."""
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        import models

        if getattr(self, "_db_ready", False) is False:
            models.init_db(self.env["DATABASE_URL"], 2)
            self._db_ready = True
        return models


class Client:
    """A person's session over plain HTTP (no browser): for seeding data quickly. Forms are
    posted the way a browser without JavaScript posts them, with the page's CSRF token."""

    def __init__(self, base_url: str):
        import requests

        self.base = base_url
        self.http = requests.Session()

    def get(self, path: str, **kw):
        return self.http.get(self.base + path, timeout=20, **kw)

    def csrf(self, path: str = "/") -> str:
        html = self.get(path).text
        m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or \
            re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
        assert m, f"no CSRF token on {path}"
        return m.group(1)

    def post(self, path: str, data: dict | None = None, expect=(200, 303), **kw):
        data = dict(data or {})
        data.setdefault("csrf_token", self.csrf())
        resp = self.http.post(self.base + path, data=data, allow_redirects=False, timeout=30, **kw)
        if expect and resp.status_code not in expect:
            raise AssertionError(f"POST {path}: {resp.status_code}\n{resp.text[:2000]}")
        return resp

    def register(self, email: str, password: str = "correct horse battery staple", name: str = "") -> "Client":
        self.post("/auth/register", {"email": email, "password": password, "name": name,
                                     "csrf_token": self.csrf("/auth/register")}, expect=(303,))
        return self

    def song_ids(self) -> list[str]:
        ids = re.findall(r'class="song-card[^"]*" id="song-([0-9a-f]{32})"', self.get("/library").text)
        return list(dict.fromkeys(ids))

    def create(self, **fields) -> list[str]:
        """Submit the Create form; returns the ids of the new songs."""
        before = set(self.song_ids())
        data = {"mode": "description", "duration": "10", "variants": "1", "idempotency_key": secrets.token_hex(16)}
        data.update({k: str(v) for k, v in fields.items()})
        self.post("/create", data, expect=(303,))
        return [i for i in self.song_ids() if i not in before]

    def status(self, song_id: str) -> str:
        html = self.get(f"/songs/{song_id}/status").text
        m = re.search(r'data-status="(\w+)"', html)
        return m.group(1) if m else "?"

    def wait_processed(self, ids, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        pending = list(ids)
        while pending and time.time() < deadline:
            states = {i: self.status(i) for i in pending}
            failed = [i for i, st in states.items() if st == "failed"]
            if failed:
                raise AssertionError(f"song(s) failed: {failed}")
            pending = [i for i, st in states.items() if st != "processed"]
            if pending:
                time.sleep(0.5)
        if pending:
            raise AssertionError(f"not processed after {timeout:.0f} s: {pending}")

    def cookies(self) -> list[dict]:
        """The session cookies in Playwright's `context.add_cookies` shape."""
        return [{"name": c.name, "value": c.value, "url": self.base} for c in self.http.cookies]
