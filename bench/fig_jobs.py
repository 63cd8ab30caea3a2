"""Figures 2, 3 and 4: the queue hand-off, the worker's overhead and model residency.

Each figure drives a real worker process (`bench_worker.py`: the GpuWorker of gpu_worker.py
with timestamps) through the real submit path (`app.create.service.parse`, `core.songs.submit`, the same
code the create POST runs: one transaction, then the fair dispatcher enqueues into RQ).

- hand-off (2): `core.songs.submit` is called with `core.dispatch.add_pending` wrapped to note the
  wall-clock time it is entered, which is right after the submit transaction commits; the
  worker notes when `jobs.generate.run` is entered. The worker is idle at each submit (the
  previous job finished and RQ filed it). No-op engines keep each job short, so hundreds fit.
- overhead (3): job wall (inside `jobs.generate.run`) minus the engines' own seconds
  (writer + music + cover from the job's per-stage timer); the rest is broken down into
  encode, upload, db and other.
- residency (4): the worker's engine load counters before and after every job.
- idle gap (8): a backlog of jobs on one worker, first finishing each job inline
  (WORKER_OVERLAP=false), then with the encode and upload in the background (the default); the
  gap is the time from one job's last GPU work (its covers) to the next job's first (its claim),
  from the windows the job reports (`result["gpu"]`).
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import HERE, ROOT, Row, Settings, median, ms, pct, say, secs, stop, verdict

ENGINE_STAGES = ("writer", "music", "cover")


@dataclass
class Worker:
    proc: subprocess.Popen
    key: str
    ready: dict
    log: Path
    redis: Any
    records: list = field(default_factory=list)

    def next_record(self, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the bench worker sent nothing for {timeout:.0f} s; see its log:\n"
                                   + tail(self.log))
            got = self.redis.blpop([self.key], timeout=min(2, max(1, int(left))))
            if got is not None:
                return json.loads(got[1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bench worker exited ({self.proc.returncode}):\n" + tail(self.log))

    def close(self) -> None:
        stop(self.proc, timeout=30)
        self.redis.delete(self.key)


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def start_worker(settings: Settings, engines: str, log_dir: Path, **env: Any) -> Worker:
    from redis import Redis

    key = f"{settings.tag}:records:{uuid.uuid4().hex[:8]}"
    log = log_dir / f"worker-{engines}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(HERE / "bench_worker.py"), key, "--engines", engines],
                                cwd=ROOT, env=settings.env(**env), stdout=fh, stderr=subprocess.STDOUT)
    worker = Worker(proc=proc, key=key, ready={}, log=log, redis=Redis.from_url(settings.redis_url, socket_timeout=30))
    ready = worker.next_record(timeout=180)
    assert ready["event"] == "ready", ready
    worker.ready = ready
    return worker


class Submitter:
    """Submits generations in this process through core.songs.submit, timing the commit."""

    def __init__(self, settings: Settings, credits: int):
        import models
        from app.create import service
        from core import dispatch, songs

        self.config = settings.config()
        self.service, self.songs = service, songs
        models.init_db(self.config.DATABASE_URL, 4)
        models.db.connect(reuse_if_open=True)
        email = f"{settings.tag}-{uuid.uuid4().hex[:6]}@bench.invalid"
        self.user = models.User.create(email=email, name="Bench", password_hash="!")
        with models.write_transaction():
            models.apply_credits(self.user, credits, "grant", f"bench:{email}", "bench credits")
        self.committed: dict[str, float] = {}
        self.enqueued: dict[str, float] = {}
        real = dispatch.add_pending

        def add_pending(config, generation, *a, **kw):
            self.committed[generation.id] = time.time()  # submit() calls this right after its commit
            try:
                return real(config, generation, *a, **kw)
            finally:
                self.enqueued[generation.id] = time.time()

        self._real, self._dispatch = real, dispatch
        dispatch.add_pending = add_pending

    def submit(self, duration: int, variants: int, n: int) -> str:
        req = self.service.parse({"mode": "description", "duration": str(duration), "variants": str(variants),
                                  "description": f"a dreamy synthwave song about night drives, take {n}"},
                                 self.config)
        gen, created = self.songs.submit(self.user, req, self.config, source="bench")
        assert created
        return gen.id

    def close(self) -> None:
        import models

        self._dispatch.add_pending = self._real
        if not models.db.is_closed():
            models.db.close()


def rq_started(config, job_id: str) -> float | None:
    """When RQ marked the job started (epoch seconds), once it has finished."""
    from core.queue import fetch_job

    for _ in range(600):
        job = fetch_job(config, job_id)
        if job is None:
            return None
        status = job.get_status(refresh=True)
        if status in ("finished", "failed"):
            started = job.started_at
            if started is None:
                return None
            if started.tzinfo is None:
                started = started.replace(tzinfo=dt.timezone.utc)
            return started.timestamp()
        time.sleep(0.005)
    return None


# ------------------------------------------------------------------------------ figure 2
def handoff(settings: Settings, log_dir: Path, jobs: int, idle: float = 0.05) -> tuple[list[Row], dict]:
    say(f"figure 2: queue hand-off over {jobs} jobs (no-op engines, worker idle at each submit)")
    worker = start_worker(settings, "stub", log_dir, WORKER_OVERLAP="false")  # whole jobs, as figure 3 reads them
    sub = Submitter(settings, credits=jobs + 10)
    total, to_queue, queue_to_rq, rq_to_run, walls, outcomes = [], [], [], [], [], []
    try:
        for i in range(jobs):
            time.sleep(idle)  # the worker is back waiting on the queue
            gid = sub.submit(duration=10, variants=1, n=i)
            rec = worker.next_record()
            assert rec["event"] == "job" and rec["id"] == gid, rec
            started = rq_started(sub.config, gid)  # also waits until RQ has filed the job
            total.append(rec["entered"] - sub.committed[gid])
            to_queue.append(sub.enqueued[gid] - sub.committed[gid])
            if started is not None:
                queue_to_rq.append(started - sub.enqueued[gid])
                rq_to_run.append(rec["entered"] - started)
            walls.append(rec["wall"])
            outcomes.append((rec.get("result") or {}).get("processed"))
    finally:
        sub.close()
        worker.close()
    ok = sum(1 for o in outcomes if o == 1)
    data = {"jobs": jobs, "processed": ok, "median": median(total), "p95": pct(total, 95), "max": max(total),
            "commit_to_enqueued": median(to_queue), "enqueued_to_rq_started": median(queue_to_rq),
            "rq_started_to_run": median(rq_to_run), "stub_job_wall_median": median(walls),
            "stub_job_wall_p95": pct(walls, 95)}
    rows = [
        Row("2", f"hand-off, commit -> job starts, median ({jobs} jobs)", ms(data["median"]), "< 20 ms",
            verdict(data["median"] < 0.020)),
        Row("2", "hand-off p95 / max", f"{ms(data['p95'])} / {ms(data['max'])}"),
        Row("2", "  of which commit -> in RQ / RQ -> worker / worker -> job code",
            f"{ms(data['commit_to_enqueued'])} / {ms(data['enqueued_to_rq_started'])} / "
            f"{ms(data['rq_started_to_run'])}"),
    ]
    if ok != jobs:
        rows.append(Row("2", "jobs processed", f"{ok} of {jobs}", "all", verdict(False)))
    return rows, data


# ------------------------------------------------------------------------------ figures 3, 4
def run_jobs(settings: Settings, log_dir: Path, label: str, jobs: int, duration: int, variants: int,
             **env: Any) -> dict:
    """`jobs` generations one after another on one worker; per-job records and the ready record.
    Jobs finish inline (WORKER_OVERLAP=false) so each record holds the whole job's stages."""
    env.setdefault("WORKER_OVERLAP", "false")
    worker = start_worker(settings, "settings", log_dir, **env)
    sub = Submitter(settings, credits=jobs * variants + 10)
    recs = []
    try:
        for i in range(jobs):
            gid = sub.submit(duration=duration, variants=variants, n=i)
            rec = worker.next_record()
            assert rec["event"] == "job" and rec["id"] == gid, rec
            result = rec.get("result") or {}
            if result.get("processed") != variants:
                raise RuntimeError(f"{label}: job {i + 1} did not process its {variants} song(s): {result}\n"
                                   + tail(worker.log))
            recs.append(rec)
            rq_started(sub.config, gid)
    finally:
        sub.close()
        worker.close()
    return {"label": label, "ready": worker.ready, "jobs": recs, "duration": duration, "variants": variants}


def overhead(run: dict) -> tuple[list[Row], dict]:
    label, recs = run["label"], run["jobs"]
    walls, engine, over, upload, encode, dbs, other, shares = [], [], [], [], [], [], [], []
    for rec in recs:
        st = rec["result"]["stages"]
        e = sum(st.get(s, 0.0) for s in ENGINE_STAGES)
        walls.append(rec["wall"])
        engine.append(e)
        over.append(rec["wall"] - e)
        upload.append(st.get("upload", 0.0))
        encode.append(st.get("encode", 0.0))
        dbs.append(st.get("db", 0.0))
        other.append(rec["wall"] - sum(st.values()))
        shares.append((rec["wall"] - e) / rec["wall"])
    data = {"label": label, "jobs": len(recs), "duration": run["duration"], "variants": run["variants"],
            "wall": median(walls), "engine": median(engine), "overhead": median(over),
            "overhead_share": median(shares), "upload": median(upload), "encode": median(encode),
            "db": median(dbs), "other": median(other),
            "overhead_less_upload": median(o - u for o, u in zip(over, upload)),
            "overhead_less_upload_encode": median(o - u - c for o, u, c in zip(over, upload, encode))}
    met = data["overhead_share"] <= 0.05 or data["overhead_less_upload"] <= 0.100
    what = f"{label}: {run['variants']} x {run['duration']} s, median of {len(recs)} jobs"
    rows = [
        Row("3", f"overhead, {what}",
            f"{ms(data['overhead'])} = {data['overhead_share'] * 100:.1f} % of {secs(data['wall'])} "
            f"(engines {secs(data['engine'])})", "<= 5 % or <= 100 ms + upload", verdict(met)),
        Row("3", f"  {label}: encode / upload / db / other",
            f"{ms(data['encode'])} / {ms(data['upload'])} / {ms(data['db'])} / {ms(data['other'])}"),
        Row("3", f"  {label}: overhead less encode and upload (the job's own glue)",
            ms(data["overhead_less_upload_encode"]), "<= 100 ms",
            verdict(data["overhead_less_upload_encode"] <= 0.100)),
    ]
    return rows, data


def residency(run: dict) -> tuple[list[Row], dict]:
    label, recs, ready = run["label"], run["jobs"], run["ready"]
    deltas = [r["load_count_after"] - r["load_count_before"] for r in recs]
    counts_after = recs[-1]["load_counts_after"] if recs else {}
    walls = [r["wall"] for r in recs]
    first, rest = (walls[0], median(walls[1:])) if len(walls) > 1 else (walls[0] if walls else float("nan"),
                                                                        float("nan"))
    data = {"label": label, "jobs": len(recs), "load_count_at_ready": ready.get("load_count"),
            "load_seconds": ready.get("load_seconds"), "role_load_seconds": ready.get("role_load_seconds"),
            "loads_during_jobs": sum(deltas), "load_counts_after": counts_after, "first_job_wall": first,
            "other_jobs_wall_median": rest, "worker_ready_seconds": ready.get("seconds_from_start")}
    ok = data["loads_during_jobs"] == 0 and data["load_count_at_ready"] == 1 and all(
        v == 1 for v in counts_after.values())
    per_role = ", ".join(f"{k} {v}" for k, v in sorted(counts_after.items()))
    rows = [
        Row("4", f"{label}: engine loads over {len(recs)} jobs",
            f"1 at worker start ({secs(data['load_seconds'])}), {data['loads_during_jobs']} in jobs ({per_role})",
            "jobs 2..N load nothing", verdict(ok)),
        Row("4", f"  {label}: job 1 / jobs 2..N wall (median)",
            f"{secs(first)} / {secs(rest)}; a per-job load would add {secs(data['load_seconds'])} to each"),
    ]
    return rows, data


# ------------------------------------------------------------------------------ figure 8
def _gaps(settings: Settings, log_dir: Path, jobs: int, duration: int, variants: int, overlap: bool) -> dict:
    import models
    from models import Song

    worker = start_worker(settings, "settings", log_dir, ENGINE="offline", WORKER_OVERLAP=str(overlap).lower())
    sub = Submitter(settings, credits=jobs * variants + 10)
    try:
        ids = [sub.submit(duration=duration, variants=variants, n=i) for i in range(jobs)]  # a backlog
        recs = [worker.next_record() for _ in ids]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the last job's files may still be on their way
            left = Song.select().where(Song.generation.in_(ids) & (Song.status != "processed")).count()
            if not left:
                break
            time.sleep(0.1)
        processed = Song.select().where(Song.generation.in_(ids) & (Song.status == "processed")).count()
    finally:
        sub.close()
        worker.close()
        if not models.db.is_closed():
            models.db.close()
    windows = sorted(tuple((r.get("result") or {}).get("gpu") or (float("nan"), float("nan"))) for r in recs)
    gaps = [b[0] - a[1] for a, b in zip(windows, windows[1:])]
    span = windows[-1][1] - windows[0][0] if windows else float("nan")
    busy = sum(b - a for a, b in windows)
    waits = [(r.get("result") or {}).get("finisher_wait", 0.0) for r in recs[1:]]
    return {"overlap": overlap, "jobs": jobs, "processed": processed, "songs": jobs * variants,
            "finisher_wait_median": median(waits) if waits else 0.0,
            "gap_median": median(gaps), "gap_p95": pct(gaps, 95), "gpu_busy_share": busy / span if span else 0.0}


def idle_gap(settings: Settings, log_dir: Path, jobs: int, duration: int, variants: int) -> tuple[list[Row], dict]:
    say(f"figure 8: idle GPU between jobs, a backlog of {jobs} jobs of {variants} x {duration} s "
        "(offline engines), inline then overlapped")
    inline = _gaps(settings, log_dir, jobs, duration, variants, overlap=False)
    over = _gaps(settings, log_dir, jobs, duration, variants, overlap=True)
    ratio = inline["gap_median"] / over["gap_median"] if over["gap_median"] > 0 else float("inf")
    data = {"inline": inline, "overlap": over, "ratio": ratio}
    ok = inline["processed"] == inline["songs"] and over["processed"] == over["songs"]
    rows = [
        Row("8", f"idle gap between jobs, inline finish (median of {jobs - 1})",
            f"{ms(inline['gap_median'])} (p95 {ms(inline['gap_p95'])}); GPU stages busy "
            f"{inline['gpu_busy_share'] * 100:.0f} % of the span"),
        Row("8", f"idle gap between jobs, encode + upload overlapped (median of {jobs - 1})",
            f"{ms(over['gap_median'])} (p95 {ms(over['gap_p95'])}); GPU stages busy "
            f"{over['gpu_busy_share'] * 100:.0f} % of the span", f"smaller than inline ({ratio:.1f}x)",
            verdict(over["gap_median"] < inline["gap_median"] and ok)),
        Row("8", "  overlapped: of which waiting for the job before to finish writing (median)",
            ms(over["finisher_wait_median"])),
    ]
    if not ok:
        rows.append(Row("8", "songs processed", f"{inline['processed']} + {over['processed']} of "
                                                 f"{inline['songs'] + over['songs']}", "all", verdict(False)))
    return rows, data
