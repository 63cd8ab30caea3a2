"""Operations: /healthz (the process answers), /readyz (database, Redis and storage reachable; 503
naming what failed), /metrics (Prometheus), plus one access-log line and a latency sample per
request."""
from __future__ import annotations

import logging
import re
import threading
import time

import peewee
from flask import Blueprint, Response, g, jsonify, request

import models
from core.queue import redis_conn
from core.storage import get_storage

from .. import error_json
from ..extensions import settings

bp = Blueprint("ops", __name__)
log = logging.getLogger("tunesmith.http")

CHECK_TIMEOUT = 3.0  # seconds per readiness check
PROBE_KEY = "tunesmith-readyz-probe"
QUIET = {"ops.healthz", "ops.readyz", "ops.metrics", "static", "rq_dashboard.static"}


def register(app):
    app.register_blueprint(bp)
    # First of all before_request hooks, so the latency covers the database connect too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_finish_request)


# ------------------------------------------------------------------------------ per request
def _start_timer():
    g.started_at = time.perf_counter()


def _finish_request(response):
    started = g.get("started_at")
    if started is None:
        return response
    seconds = time.perf_counter() - started
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    try:
        from .metrics import observe_request

        observe_request(request.method, route, response.status_code, seconds)
    except Exception as exc:  # metrics never break a response
        log.debug("latency not recorded: %s", exc)
    level = logging.DEBUG if request.endpoint in QUIET else logging.INFO
    log.log(level, "%s %s %s %.1fms", request.method, request.path, response.status_code, seconds * 1000)
    return response


# ------------------------------------------------------------------------------ probes
def _scrub(exc: BaseException) -> str:
    text = re.sub(r"://[^/@\s]*@", "://***@", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def _with_timeout(fn, timeout: float = CHECK_TIMEOUT) -> dict:
    """Run a check in a daemon thread so a hung dependency costs the probe `timeout` at most."""
    outcome: dict = {}

    def target():
        try:
            fn()
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - any failure means "not ready"
            outcome["error"] = _scrub(exc)

    started = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True, name="readyz-check")
    thread.start()
    thread.join(timeout)
    ms = round((time.perf_counter() - started) * 1000, 1)
    if thread.is_alive():
        return {"ok": False, "error": f"timed out after {timeout:g}s", "ms": ms}
    if outcome.get("ok"):
        return {"ok": True, "ms": ms}
    return {"ok": False, "error": outcome.get("error", "failed"), "ms": ms}


def _check_database() -> dict:
    started = time.perf_counter()
    try:
        models.db.connect(reuse_if_open=True)
        models.db.execute_sql("SELECT 1").fetchone()
    except Exception as exc:
        return {"ok": False, "error": _scrub(exc), "ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _timeout(cfg) -> float:
    return cfg.READY_CHECK_TIMEOUT or CHECK_TIMEOUT


def _check_redis(cfg) -> dict:
    return _with_timeout(lambda: redis_conn(cfg).ping(), _timeout(cfg))


def _check_storage(cfg) -> dict:
    def probe():
        storage = get_storage(cfg)
        storage.ping()
        storage.exists(PROBE_KEY)  # a round trip every time (ping may be answered from a cache)

    return _with_timeout(probe, _timeout(cfg))


def _ready_response(database: dict):
    cfg = settings()
    checks = {"database": database, "redis": _check_redis(cfg), "storage": _check_storage(cfg)}
    failed = [name for name, result in checks.items() if not result["ok"]]
    if not failed:
        return jsonify({"status": "ready", "checks": checks}), 200
    resp, status = error_json(503, "not_ready", f"Not ready: {', '.join(failed)} unreachable.")
    body = resp.get_json()
    body.update(status="unavailable", failed=failed, checks=checks)
    for name in failed:
        log.warning("readiness: %s failed: %s", name, checks[name].get("error"))
    resp = jsonify(body)
    resp.headers["Retry-After"] = "5"
    return resp, 503


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    resp, status = _ready_response(_check_database())
    resp.headers["Cache-Control"] = "no-store"
    return resp, status


@bp.errorhandler(peewee.OperationalError)
@bp.errorhandler(peewee.InterfaceError)
def _database_down(exc):
    """The app opens the database before every request; when that fails on a probe, answer it
    here rather than with the generic 503 page."""
    if request.endpoint == "ops.healthz":
        return jsonify({"status": "ok"})
    if request.endpoint == "ops.readyz":
        return _ready_response({"ok": False, "error": _scrub(exc), "ms": 0.0})
    return error_json(503, "unavailable", "The database is unreachable.")


@bp.get("/metrics")
def metrics():
    cfg = settings()
    token = cfg.METRICS_TOKEN
    if token:
        import hmac

        given = request.headers.get("Authorization", "").partition(" ")[2].strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            resp, status = error_json(401, "unauthorized", "Send the metrics token as `Authorization: Bearer <token>`.")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return resp, status
    from .metrics import render

    body, content_type = render(cfg)
    return Response(body, 200, content_type=content_type, headers={"Cache-Control": "no-store"})
