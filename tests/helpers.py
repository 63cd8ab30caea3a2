"""Helpers shared by tests (and bench/harness.py): loopback ports, users and submissions, run the
worker in-process, serve the app over real HTTP."""
from __future__ import annotations

import secrets
import socket
import threading
import time
from contextlib import contextmanager

import models


# ------------------------------------------------------------------------------ loopback ports
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc=None) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; RuntimeError after
    `timeout` seconds, or as soon as `proc` (the subprocess.Popen meant to listen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process meant to listen on port {port} exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


# ------------------------------------------------------------------------------ users, submissions
def make_user(email: str, credits: int = 100, password_hash: str | None = None, *, app=None):
    """A user with a signup grant of `credits`, registered with the password "password123"
    (scrypt: slow). With `password_hash` the user is created with that hash instead (fast: many
    users can share one precomputed hash; "!" for users who never log in).

    With `app` this opens its own database connection; without, call it with the database
    connected (`connected(app)`). Returns the User row as read back."""
    if app is not None:
        with connected(app):
            return make_user(email, credits, password_hash)
    from models import User

    if password_hash is None:
        return User.register(email, "password123", credits=credits)
    with models.write_transaction():
        user = User.create(email=email.lower(), password_hash=password_hash)
        if credits:
            models.apply_credits(user, credits, "grant", f"user:{user.id}:signup", "Welcome credits")
    return User.get_by_id(user.id)


def submit(user, n: int = 1, variants: int = 1, duration: int = 10, text: str = "song", *,
           app=None, cfg=None) -> list:
    """Submit `n` description-mode generations for `user` through the Create form's parser and
    `core.songs.submit` (validation, credit reservation, hand-off to the queue), like the form does; returns the Generations.

    Pass `app` (this opens its own database connection) or `cfg`, the app's config (then call it
    with the database connected). Descriptions are "<text> <i> <random hex>"."""
    if app is not None:
        with connected(app):
            return submit(user, n, variants, duration, text, cfg=app.extensions["tunesmith_config"])
    if cfg is None:
        raise TypeError("submit() needs app= or cfg=")
    from app.create import service
    from core import songs

    gens = []
    for i in range(n):
        req = service.parse({"mode": "description", "description": f"{text} {i} {secrets.token_hex(3)}",
                             "duration": duration, "variants": variants}, cfg)
        gens.append(songs.submit(user, req, cfg)[0])
    return gens


def run_worker(app, **kwargs):
    """Serve the app's queue with the real GPU worker class, in-process, until it is empty."""
    from gpu_worker import build_worker

    cfg = app.extensions["tunesmith_config"]
    import uuid

    kwargs.setdefault("name", f"test-worker-{uuid.uuid4().hex[:8]}")
    worker = build_worker(cfg, init_database=False, reconcile_interval=0, **kwargs)
    worker.work(burst=True, logging_level="WARNING")
    if not models.db.is_closed():
        models.db.close()
    return worker


def connected(app):
    """Context manager: a database connection for direct model access."""
    @contextmanager
    def _ctx():
        with app.app_context():
            models.db.connect(reuse_if_open=True)
            try:
                yield
            finally:
                if not models.db.is_closed():
                    models.db.close()
    return _ctx()


@contextmanager
def live_server(app):
    """The app on a threaded WSGI server on a free loopback port (real HTTP, real concurrency)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
