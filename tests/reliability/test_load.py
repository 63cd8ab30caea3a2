"""Load: RELIABILITY_LOAD_USERS (50) people signed in over real HTTP against gunicorn
(2 workers x 4 threads, the Procfile's defaults) on loopback for RELIABILITY_LOAD_SECONDS (10 here,
60 for the figures), each submitting songs and polling their status like the library page does,
with a GPU worker (offline engines) making songs at the same time.

Must hold: no 5xx and no failed connection; every accepted submit has exactly one generation with
its songs and reservation, and no generation exists that was not accepted; the ledger sums match;
every unfinished generation is still handed off (in RQ or its owner's pending list).
"""
from __future__ import annotations

import os
import random
import re
import threading
import time
import uuid
from collections import defaultdict

import pytest
import requests

from core import dispatch
from core.queue import fetch_job
from models import Generation, Song
from tests.conftest import csrf_from
from tests.helpers import connected, free_port, make_user
from tests.reliability import harness
from tests.reliability.harness import Browser, audit, percentile, process_env, record, spawn_worker

pytestmark = pytest.mark.reliability

USERS = int(os.environ.get("RELIABILITY_LOAD_USERS", "50"))
SECONDS = float(os.environ.get("RELIABILITY_LOAD_SECONDS", "10"))
SONG_ID = re.compile(r'data-song-id="([0-9a-f]{32})"')
STATUS = re.compile(r'data-status="(\w+)"')


def test_fifty_users_submit_and_poll_against_gunicorn(app_factory, tmp_path):
    app = app_factory(MAX_RUNNING_PER_USER=1)
    cfg = app.extensions["tunesmith_config"]
    with connected(app):
        users = [make_user(f"load{i}@example.com", 10_000, "!").id for i in range(USERS)]
    env = process_env(cfg, tmp_path)
    port = free_port()
    web = harness.spawn_gunicorn(env, tmp_path / "logs", port, workers=2, threads=4)
    worker = spawn_worker(env, tmp_path / "logs", RELIABILITY_NICE=10, RECONCILE_INTERVAL=5,
                          RELIABILITY_RECONCILE_GRACE=5)
    base = f"http://127.0.0.1:{port}"

    # Everyone is signed in with a session cookie made by the app's own serializer (50 real logins
    # would spend ~5 s of scrypt before the measured window; login itself is tested elsewhere).
    serializer = app.session_interface.get_signing_serializer(app)
    people: list[Browser] = []
    for uid in users:
        p = Browser.__new__(Browser)
        p.base, p.s = base, requests.Session()
        p.s.cookies.set(app.config["SESSION_COOKIE_NAME"], serializer.dumps({"_user_id": f"{uid}:1", "_fresh": True}),
                        domain="127.0.0.1", path="/")
        p.token = None
        people.append(p)

    samples: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    failures: list[str] = []
    accepted: set[str] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def timed(kind: str, fn):
        started = time.perf_counter()
        try:
            resp = fn()
        except requests.RequestException as exc:
            with lock:
                failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - started
        with lock:
            samples[kind].append(elapsed)
            statuses[kind][resp.status_code] += 1
        return resp

    def person(p: Browser, seed: int):
        rnd = random.Random(seed)
        page = timed("create page", lambda: p.s.get(base + "/create", timeout=60))
        p.token = csrf_from(page.text)  # the form's token, as a browser gets it
        while time.monotonic() < deadline:
            key = uuid.uuid4().hex
            resp = timed("submit", lambda: p.create(key, timeout=60))
            if resp is not None and resp.status_code == 303:
                with lock:
                    accepted.add(key)
            lib = timed("library", lambda: p.s.get(base + "/library", timeout=60))
            ids = SONG_ID.findall(lib.text)[:2] if lib is not None and lib.status_code == 200 else []
            for _ in range(3):  # poll the newest card like HTMX does, until it is finished
                if not ids or time.monotonic() > deadline:
                    break
                time.sleep(rnd.uniform(0.2, 0.6))
                card = timed("status", lambda: p.s.get(f"{base}/songs/{ids[0]}/status",
                                                       headers={"HX-Request": "true"}, timeout=60))
                if card is None or STATUS.search(card.text) is None or \
                        STATUS.search(card.text).group(1) in ("processed", "failed"):
                    break
            if rnd.random() < 0.3:
                timed("feed", lambda: p.s.get(base + "/", timeout=60))
            time.sleep(rnd.uniform(0.2, 0.8))

    t_start = time.monotonic()
    threads = [threading.Thread(target=person, args=(p, i)) for i, p in enumerate(people)]
    [t.start() for t in threads]
    [t.join(SECONDS + 120) for t in threads]
    wall = time.monotonic() - t_start
    cpu_web = _cpu_seconds(web.pid)
    web.stop()
    worker.stop()

    five_xx = {k: {s: n for s, n in v.items() if s >= 500} for k, v in statuses.items()}
    assert not failures, failures[:10]
    assert not any(five_xx.values()), five_xx
    assert statuses["submit"].get(303, 0) == len(accepted) > 0
    with connected(app):
        gens = list(Generation.select())
        keys = [g.idempotency_key for g in gens]
        assert sorted(keys) == sorted(accepted), "lost or extra generations"
        result = audit(final=False)
        assert result.lost == 0, result.problems[:10]
        unfinished = [g for g in gens if not g.is_finished()]
        dropped = [g.id for g in unfinished if not _handed_off(cfg, g)]
        assert not dropped, f"unfinished generations neither in RQ nor pending: {dropped[:5]}"
        processed = Song.select().where(Song.status == "processed").count()

    total = sum(len(v) for v in samples.values())
    every = [x for v in samples.values() for x in v]
    rows = {kind: {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99)}
            for kind, v in sorted(samples.items())}
    rows["all"] = {"n": total, "p50": percentile(every, 50), "p95": percentile(every, 95),
                   "p99": percentile(every, 99)}
    record("load", users=USERS, seconds=round(wall, 1), requests=total, rps=round(total / wall, 1),
           submits=len(accepted), songs_processed=processed, five_xx=0, errors=0, latency=rows,
           statuses={k: dict(v) for k, v in statuses.items()}, web_cpu_seconds=cpu_web)
    print(f"\n{USERS} users, {wall:.1f}s: {total} requests ({total / wall:.1f}/s), {len(accepted)} submits, "
          f"{processed} songs made; " + "; ".join(
              f"{k} p50 {v['p50'] * 1000:.0f} ms p95 {v['p95'] * 1000:.0f} ms p99 {v['p99'] * 1000:.0f} ms"
              for k, v in rows.items()))


def _handed_off(cfg, gen) -> bool:
    job = fetch_job(cfg, gen.id)
    if job is not None and job.get_status(refresh=True) in {"queued", "started", "deferred", "scheduled"}:
        return True
    r = dispatch.redis_conn(cfg)
    if r.lpos(dispatch.pending_key(cfg, gen.user_id), gen.id) is not None:
        return True
    # the worker may have just finished it between the two reads
    return Song.select().where((Song.generation == gen.id) & Song.status.not_in(Song.FINAL)).count() == 0


def _cpu_seconds(pid: int) -> float | None:
    """user+system CPU of gunicorn's master and workers so far (Linux /proc)."""
    total = 0.0
    try:
        pids = [pid] + [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        tick = os.sysconf("SC_CLK_TCK")
        for p in pids:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return None
    return round(total, 1)
