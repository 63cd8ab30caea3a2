"""Helpers shared by tests: run the worker in-process, serve the app over real HTTP."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import models


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
