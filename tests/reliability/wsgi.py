"""gunicorn entry for the reliability trials: `gunicorn "tests.reliability.wsgi:create()"`.

The product app (`app.create_app()`) wrapped in a thin WSGI layer that lets a trial observe it:

- every response carries `X-Served-By: <pid>` (which gunicorn worker answered);
- `GET /_reliability/slow?s=1.5` sleeps, then answers 200: a request certain to be in flight;
- with RELIABILITY_SEEN_LOG set, the `X-Trial-Id` of every request that reached the app is
  appended to that file as it arrives (so a trial knows which requests were in flight).
"""
from __future__ import annotations

import os
import time


class Observe:
    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        self.pid = str(os.getpid())
        self.seen_log = os.environ.get("RELIABILITY_SEEN_LOG")

    def __call__(self, environ, start_response):
        pid = str(os.getpid())  # after gunicorn's fork
        trial_id = environ.get("HTTP_X_TRIAL_ID")
        if trial_id and self.seen_log:
            fd = os.open(self.seen_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (trial_id + "\n").encode())
            finally:
                os.close(fd)

        def start(status, headers, exc_info=None):
            return start_response(status, list(headers) + [("X-Served-By", pid)], exc_info)

        if environ.get("PATH_INFO") == "/_reliability/slow":
            from urllib.parse import parse_qs

            seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0])
            time.sleep(min(seconds, 30.0))
            body = f"slow request {trial_id or ''} done after {seconds}s\n".encode()
            start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return self.wsgi_app(environ, start)


def create():
    from app import create_app

    app = create_app()
    app.wsgi_app = Observe(app.wsgi_app)
    return app
