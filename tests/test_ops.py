"""Operations: /healthz, /readyz (503 naming what failed, and back), /metrics (Prometheus, with job
metrics written by the worker through Redis), the RQ dashboard for admins, the worker's
`--check` health check, and the one-line, secret-free logs."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
import config as settings
from models import User
from tests.conftest import REDIS_URL
from tests.helpers import connected, free_port, run_worker, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN_RE = re.compile(r"data-token>(ts_[A-Za-z0-9_\-]+)<")
# Backend-independent behaviour: one database is enough.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


def make_token(auth, name="ops"):
    resp = auth.post("/settings/tokens", {"name": name})
    assert resp.status_code == 201
    return TOKEN_RE.search(resp.get_data(as_text=True)).group(1)


def sibling_app(app, **overrides):
    """A second app on the same (already migrated) database with some settings changed."""
    cfg = app.extensions["tunesmith_config"]
    values = dict(DATABASE_URL=cfg.DATABASE_URL, REDIS_URL=cfg.REDIS_URL, VAR_DIR=cfg.VAR_DIR,
                  STORAGE_URL=cfg.STORAGE_URL, QUEUE_NAME=cfg.QUEUE_NAME, READY_CHECK_TIMEOUT=1.5)
    values.update(overrides)
    return create_app(settings.TestConfig(**values))


# ------------------------------------------------------------------------------ probes
def test_healthz_and_readyz_when_all_is_well(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "ready"
    assert {k: v["ok"] for k, v in body["checks"].items()} == {"database": True, "redis": True, "storage": True}


class RedisServer:
    """A redis-server of our own on a free port, so stopping it touches nothing else."""

    def __init__(self, port: int):
        self.port, self.proc = port, None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _ready(client, want: int, tries: int = 20):
    for _ in range(tries):
        resp = client.get("/readyz")
        if resp.status_code == want:
            return resp
        time.sleep(0.25)
    return resp


@sqlite_only
def test_readyz_turns_503_naming_redis_and_back(app):
    port = free_port()
    server = RedisServer(port)
    server.start()
    try:
        client = sibling_app(app, REDIS_URL=f"redis://127.0.0.1:{port}/0").test_client()
        assert _ready(client, 200).status_code == 200

        server.stop()
        resp = _ready(client, 503)
        assert resp.status_code == 503
        body = resp.get_json()
        assert body["failed"] == ["redis"] and body["status"] == "unavailable"
        assert body["error"]["code"] == "not_ready" and "redis" in body["error"]["message"]
        assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
        assert body["checks"]["redis"]["error"]
        assert client.get("/healthz").status_code == 200  # alive, just not ready

        server.start()
        resp = _ready(client, 200)
        assert resp.status_code == 200 and resp.get_json()["status"] == "ready"
    finally:
        server.stop()


@sqlite_only
def test_readyz_names_storage_when_it_is_unreachable(app):
    closed = free_port()
    client = sibling_app(app, STORAGE_URL=f"s3://k:s@127.0.0.1:{closed}/bucket?secure=false").test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["failed"] == ["storage"]
    assert "s:" not in body["checks"]["storage"]["error"]  # no credentials in the answer


def test_readyz_names_the_database_when_it_is_unreachable(redis_conn, tmp_path):
    closed = free_port()
    app = create_app(settings.TestConfig(DATABASE_URL=f"postgresql://nobody:pw@127.0.0.1:{closed}/none",
                                REDIS_URL=REDIS_URL, VAR_DIR=tmp_path, STORAGE_URL=f"file://{tmp_path / 's'}"))
    client = app.test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["failed"] == ["database"] and "database" in body["error"]["message"]
    assert "pw@" not in str(body)
    assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------ metrics
def scrape(client) -> dict:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_show_queues_jobs_stages_songs_credits_and_latency(app, client, auth):
    cfg = app.extensions["tunesmith_config"]
    cfg.METRICS_PREFIX = f"test-metrics:{uuid.uuid4().hex[:8]}"  # this test's own counters
    auth.register()
    token = make_token(auth)
    before = scrape(client)
    assert value(before, "tunesmith_jobs_total", outcome="processed", reason="") == 0

    resp = client.post("/api/v1/generate_from_description", headers={"Authorization": f"Bearer {token}"},
                       json={"description": "a calm ambient piece", "duration": 10, "variants": 1})
    assert resp.status_code == 202
    queues = [cfg.QUEUE_NAME] + ([cfg.HIGH_QUEUE_NAME] if getattr(cfg, "HIGH_QUEUE_NAME", None) else [])
    waiting = scrape(client)
    assert sum(value(waiting, "tunesmith_queue_depth", queue=q) for q in queues) >= 1
    assert value(waiting, "tunesmith_songs", status="queued") == 1
    assert value(waiting, "tunesmith_credits_spent_total") == 1

    run_worker(app)

    after = scrape(client)
    assert sum(value(after, "tunesmith_queue_depth", queue=q) for q in queues) == 0
    assert value(after, "tunesmith_jobs_total", outcome="processed", reason="") == 1
    assert value(after, "tunesmith_songs_generated_total", outcome="processed") == 1
    assert value(after, "tunesmith_songs", status="processed") == 1
    assert value(after, "tunesmith_job_duration_seconds_count", outcome="processed") == 1
    assert value(after, "tunesmith_job_duration_seconds_bucket", outcome="processed", le="+Inf") == 1
    assert value(after, "tunesmith_job_duration_seconds_sum", outcome="processed") > 0
    for stage in ("writer", "music", "cover", "encode", "upload"):
        assert value(after, "tunesmith_job_stage_seconds_count", stage=stage) >= 1, stage
    assert value(after, "tunesmith_credits_spent_total") == 1
    assert value(after, "tunesmith_http_request_duration_seconds_count", method="POST",
                 route="/api/v1/generate_from_description", status="202") >= 1
    assert value(after, "tunesmith_scrape_error", source="redis") == 0


def test_job_outcomes_are_classified_and_add_up_across_workers(redis_conn):
    from core import metrics

    prefix = f"test-metrics:{uuid.uuid4().hex[:8]}"
    metrics.record(redis_conn, {"processed": 2, "seconds": 3.0, "stages": {"music": 2.0}}, 3.0, prefix=prefix)
    metrics.record(redis_conn, {"processed": 1, "stages": {"music": 0.2}}, 0.5, prefix=prefix)  # another worker
    metrics.record(redis_conn, {"failed": 2, "error": "oom"}, 7.0, prefix=prefix)
    metrics.record(redis_conn, {"failed": 1, "error": "KeyError"}, 1.0, prefix=prefix)
    metrics.record(redis_conn, None, 600.0, TimeoutError("JobTimeoutException"), prefix=prefix)
    metrics.record(redis_conn, {"skipped": "already finished"}, 0.01, prefix=prefix)
    data = metrics.read(redis_conn, prefix)
    assert data["jobs"] == {("processed", ""): 2, ("failed", "oom"): 1, ("failed", "other"): 2,
                            ("skipped", ""): 1}
    assert data["songs"] == {"processed": 3, "failed": 3}
    assert data["job_seconds"]["processed"]["count"] == 2 and data["job_seconds"]["failed"]["count"] == 3
    music = data["stage_seconds"]["music"]
    assert music["count"] == 2 and music["sum"] == pytest.approx(2.2) and music["buckets"] == {"2.5": 1, "0.25": 1}


@sqlite_only
def test_metrics_can_require_a_token(app, client, monkeypatch):
    monkeypatch.setattr(app.extensions["tunesmith_config"], "METRICS_TOKEN", "scrape-secret", raising=False)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


# ------------------------------------------------------------------------------ RQ dashboard
def test_rq_dashboard_is_for_admins_only(app, client, auth):
    resp = client.get("/admin/rq/")
    assert resp.status_code == 302 and "/auth/login" in resp.headers["Location"]
    assert client.get("/admin/rq/0/data/queues.json").status_code == 302

    auth.register("user@example.com")
    assert client.get("/admin/rq/").status_code == 403
    assert client.get("/admin/rq/0/data/queues.json").status_code == 403
    assert client.post("/admin/rq/queue/x/compact", headers={"X-CSRFToken": auth.csrf("/")}).status_code == 403
    auth.logout()

    from models import Generation

    auth.register("admin@example.com")
    with connected(app):
        User.update(is_admin=True).where(User.email == "admin@example.com").execute()
        gen = Generation.create(user=User.get(User.email == "admin@example.com").id, mode="description",
                                description="x", duration=10, variants=1)
    from core.queue import enqueue_generation

    cfg = app.extensions["tunesmith_config"]
    enqueue_generation(cfg, gen)
    page = client.get("/admin/rq/")
    assert page.status_code == 200 and "RQ dashboard" in page.get_data(as_text=True)
    cookie = client.get_cookie("_csrf_token", path="/admin/rq")
    assert cookie is not None
    queues = client.get("/admin/rq/0/data/queues.json").get_json()["queues"]
    mine = [q for q in queues if q["name"] == cfg.QUEUE_NAME]
    assert mine and mine[0]["count"] == 1
    assert client.get("/admin/rq/0/data/workers.json").status_code == 200
    job = client.get(f"/admin/rq/0/data/job/{gen.id}.json").get_json()
    assert job["id"] == gen.id and job["status"] == "queued"
    assert client.get("/admin/rq/0/view/job/no-such-job").status_code == 404

    # actions are POSTs behind CSRF (the dashboard's script sends the cookie back as a header)
    assert client.post(f"/admin/rq/queue/{cfg.QUEUE_NAME}/compact").status_code == 400
    resp = client.post(f"/admin/rq/queue/{cfg.QUEUE_NAME}/compact", headers={"X-CSRFToken": cookie.value})
    assert resp.status_code == 200 and resp.get_json()["status"] == "OK"
    assert client.get(f"/admin/rq/requeue/{cfg.QUEUE_NAME}").status_code == 405  # no state change on GET
    resp = client.post(f"/admin/rq/requeue/{cfg.QUEUE_NAME}", headers={"X-CSRFToken": cookie.value})
    assert resp.status_code == 200


# ------------------------------------------------------------------------------ worker --check
@sqlite_only
def test_worker_check_reflects_the_heartbeat(app, redis_conn, tmp_path):
    import gpu_worker

    cfg = app.extensions["tunesmith_config"]
    name = f"check-{uuid.uuid4().hex[:8]}"
    key = gpu_worker.HEARTBEAT_KEY.format(name=name)
    env = {**os.environ, "REDIS_URL": REDIS_URL, "WORKER_NAME": name, "VAR_DIR": str(tmp_path),
           "WORKER_HEARTBEAT_TTL": "30"}

    def check_cli():
        return subprocess.run([sys.executable, "gpu_worker.py", "--check"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    out = check_cli()
    assert out.returncode == 1 and "no live worker heartbeat" in out.stdout

    worker = gpu_worker.build_worker(cfg, init_database=False, name=name, reconcile_interval=0)
    beat = threading.Thread(target=worker._heartbeat_loop, daemon=True)
    beat.start()
    try:
        for _ in range(50):
            if redis_conn.exists(key):
                break
            time.sleep(0.05)
        out = check_cli()
        assert out.returncode == 0 and "1 live worker" in out.stdout
    finally:
        worker._stop.set()
        beat.join(5)
        redis_conn.delete(key)

    os.environ["WORKER_NAME"] = name
    try:
        redis_conn.set(key, str(time.time() - cfg.WORKER_HEARTBEAT_TTL - 1))  # stale: the worker stopped beating
        assert gpu_worker.check(cfg) == 1
        redis_conn.set(key, str(time.time()))
        assert gpu_worker.check(cfg) == 0
    finally:
        del os.environ["WORKER_NAME"]
        redis_conn.delete(key)


# ------------------------------------------------------------------------------ logs
def test_redaction():
    from core.logs import redact

    assert "ts_abcdefghijklmnopqrstuvwxyz" not in redact("token ts_abcdefghijklmnopqrstuvwxyz used")
    assert "abc.def" not in redact("Authorization: Bearer abc.def")
    assert redact("headers Bearer abc.def") == "headers Bearer ***"
    assert redact('password="hunter2" next') == "password=*** next"
    assert redact("{'password': 'hunter2', 'n': 1}") == "{'password': ***, 'n': 1}"
    assert redact("lyrics=la la").startswith("lyrics=***")
    assert redact("GET /files/eyJrIjoi.abc 200") == "GET /files/*** 200"
    assert redact("postgres://user:pw@host/db") == "postgres://user:***@host/db"
    assert "sig" not in redact("https://s3/x?X-Amz-Signature=sig&a=1")


@sqlite_only
def test_logs_are_one_line_per_event_with_ids_and_without_secrets(app, client, auth):
    from core import logs

    buf = io.StringIO()
    root = logging.getLogger()
    old_level, old_peewee = root.level, logging.getLogger("peewee").level
    handler = logs.install("DEBUG", stream=buf)
    assert handler.stream is buf
    try:
        password, lyrics = "correct horse battery", "secret words only the singer knows"
        auth.register("alice@example.com", password)
        token = make_token(auth)
        resp = client.post("/api/v1/generate_with_lyrics", json={"prompt": "folk", "lyrics": lyrics, "duration": 10, "variants": 1},
                           headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-abc123"})
        assert resp.status_code == 202 and resp.headers["X-Request-ID"] == "req-abc123"
        gen_id = resp.get_json()["generation_id"]
        client.get("/api/v1/songs", headers={"Authorization": f"Bearer {token}x"})
        logging.getLogger("tunesmith.test").info("careless %s", {"password": password, "lyrics": lyrics})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logging.getLogger("tunesmith.test").exception("failed with token=%s", token)
        run_worker(app)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("peewee").setLevel(old_peewee)

    text = buf.getvalue()
    lines = text.splitlines()
    assert any("req=req-abc123" in line and "POST /api/v1/generate_with_lyrics 202" in line for line in lines)
    assert any(f"job={gen_id}" in line and "processed" in line for line in lines), text[-3000:]
    assert not any(f"job={gen_id}" in line for line in lines if "req=" in line)
    failed = [line for line in lines if "failed with token" in line]
    assert len(failed) == 1 and "Traceback" in failed[0] and "\\n" in failed[0]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d [A-Z]+ \S+ ", line) for line in lines), lines[:5]
    for secret in (password, lyrics, token):
        assert secret not in text
