"""Fairness and scale-out: per-user caps with round-robin, priority, cancel, many workers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import models
from core import dispatch
from core.queue import redis_conn
from models import CreditEntry, Generation, Song, User
from tests.conftest import AuthActions
from tests.helpers import connected, make_user, run_worker, submit

ROOT = Path(__file__).resolve().parent.parent


def test_one_users_burst_does_not_starve_another(app):
    a, b = make_user("a@example.com", app=app), make_user("b@example.com", app=app)
    a_gens = submit(a, 10, text="a", app=app)
    b_gen = submit(b, 1, text="b", app=app)[0]
    run_worker(app)
    with connected(app):
        started = {s.generation_id: s.started_at for s in Song.select()}
        assert all(s.status == "processed" for s in Song.select())
    a_third = started[a_gens[2].id]
    assert started[b_gen.id] < a_third  # B starts before A's third


def test_queued_card_shows_position_and_cancel_returns_credits_at_once(app, client, auth):
    auth.register()
    auth.post("/create", data={"mode": "description", "description": "first", "duration": "10", "variants": "1"})
    auth.post("/create", data={"mode": "description", "description": "second", "duration": "10", "variants": "2"})
    with connected(app):
        second = Song.select().join(Generation).where(Generation.description == "second").order_by(Song.variant).first()
        user = User.get()
        assert user.balance() == 97
    page = client.get("/library").get_data(as_text=True)
    assert "data-position=" in page and "Cancel" in page
    resp = auth.post(f"/songs/{second.id}/cancel", headers={"HX-Request": "true"})
    assert resp.status_code == 200 and 'data-status="failed"' in resp.get_data(as_text=True)
    with connected(app):
        assert user.balance() == 99  # both variants' credits back at once
        assert {s.status for s in Song.select().join(Generation).where(Generation.description == "second")} == {"failed"}
    cfg = app.extensions["tunesmith_config"]
    run_worker(app)
    runs = {k.decode(): int(v) for k, v in redis_conn(cfg).hgetall(dispatch.runs_key(cfg)).items()}
    assert second.generation_id not in runs  # never reached a worker
    with connected(app):
        assert Song.select().where(Song.status == "processed").count() == 1
        assert user.balance() == 99 == user.ledger_balance()
    # someone else cannot cancel
    other = app.test_client()
    AuthActions(other).register("bob@example.com")
    assert AuthActions(other).post(f"/songs/{second.id}/cancel").status_code == 404


def test_cancel_a_running_generation_stops_it_and_releases(app, monkeypatch):
    """The cancel flag is seen at the next stage boundary or denoising step."""
    from jobs import generate, runtime

    user = make_user("c@example.com", app=app)
    gen = submit(user, 1, variants=2, app=app)[0]
    cfg = app.extensions["tunesmith_config"]
    engines = runtime.engines()
    real_render = engines.music.render

    def render_and_get_cancelled(requests, progress=None):
        with connected(app):
            assert dispatch.request_cancel(cfg, Generation.get_by_id(gen.id)) == "running"
        out = real_render(requests, progress=progress)
        progress(1.0)  # the next step reports progress and sees the flag
        return out

    monkeypatch.setattr(engines.music, "render", render_and_get_cancelled)
    run_worker(app)
    with connected(app):
        songs = list(Song.select())
        assert [s.status for s in songs] == ["failed", "failed"]
        assert all("Cancelled" in s.error for s in songs)
        assert User.get_by_id(user.id).balance() == 100


def test_paying_users_go_to_the_high_queue_without_starving_default(app):
    cfg = app.extensions["tunesmith_config"]
    free = make_user("free@example.com", app=app)
    payers = [make_user(f"payer{i}@example.com", app=app) for i in range(6)]
    with connected(app):
        User.update(has_purchased=True).where(User.id.in_([p.id for p in payers])).execute()
    free_gen = submit(free, 1, text="free", app=app)[0]
    payer_gens = [submit(p, 1, text="paid", app=app)[0] for p in payers]
    from core.queue import get_queue

    assert get_queue(cfg, cfg.HIGH_QUEUE_NAME).count == 6
    assert get_queue(cfg, cfg.QUEUE_NAME).job_ids == [free_gen.id]
    run_worker(app)
    with connected(app):
        order = [s.generation_id for s in Song.select().order_by(Song.started_at)]
    # high first, but default gets its turn after HIGH_QUEUE_BURST high jobs, not last
    assert order.index(free_gen.id) == cfg.HIGH_QUEUE_BURST
    assert set(order[:cfg.HIGH_QUEUE_BURST]) <= {g.id for g in payer_gens}


@pytest.mark.parametrize("backend", ["postgres"], indirect=False)
def test_two_workers_forty_generations_five_users_exactly_once(app, tmp_path):
    cfg = app.extensions["tunesmith_config"]
    users = [make_user(f"u{i}@example.com", credits=8, app=app) for i in range(5)]
    for u in users:
        submit(u, 8, app=app)
    env = dict(os.environ, DATABASE_URL=cfg.DATABASE_URL, REDIS_URL=cfg.REDIS_URL, QUEUE_NAME=cfg.QUEUE_NAME,
               HIGH_QUEUE_NAME=cfg.HIGH_QUEUE_NAME, STYLE_TRAIN_QUEUE=cfg.STYLE_TRAIN_QUEUE,
               STORAGE_URL=cfg.STORAGE_URL, ENGINE="offline",
               SECRET_KEY=cfg.SECRET_KEY, VAR_DIR=str(tmp_path / "var"), RECONCILE_INTERVAL="0",
               MAX_RUNNING_PER_USER="1", LOG_LEVEL="WARNING")
    procs = [subprocess.Popen([sys.executable, "gpu_worker.py", "--burst", "--name", f"w{i}-{os.getpid()}"],
                              cwd=ROOT, env=env) for i in range(2)]
    # burst workers exit when the queues are momentarily empty: keep one running until all are done
    deadline = 240
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        with connected(app):
            left = Song.select().where(Song.status.not_in(Song.FINAL)).count()
        if not left:
            break
        for i, p in enumerate(procs):
            if p.poll() is not None:
                procs[i] = subprocess.Popen([sys.executable, "gpu_worker.py", "--burst", "--name", f"w{i}b-{time.time()}"],
                                            cwd=ROOT, env=env)
        time.sleep(0.5)
    for p in procs:
        p.wait(60)
    runs = {k.decode(): int(v) for k, v in redis_conn(cfg).hgetall(dispatch.runs_key(cfg)).items()}
    with connected(app):
        assert Song.select().where(Song.status == "processed").count() == 40
        assert len(runs) == 40 and set(runs.values()) == {1}  # every generation ran exactly once
        for u in users:
            assert User.get_by_id(u.id).balance() == 0 == User.get_by_id(u.id).ledger_balance()
        assert CreditEntry.select().where(CreditEntry.kind == "capture").count() == 40
        assert CreditEntry.select().where(CreditEntry.kind == "release").count() == 0
