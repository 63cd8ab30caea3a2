"""The reconciler: the database is the source of truth, Redis only the hand-off.

- A song in `processing` whose run shows no heartbeat for WORKER_DEATH_SECONDS lost its worker
  (SIGKILL, a pre-empted VM, a frozen process): its generation runs again on a live worker, up to
  JOB_ATTEMPTS runs, then it fails and its credit is released (`core.songs.retry_or_fail`).
- A generation with queued songs but no live RQ job (lost with Redis, or its worker died or
  froze right after taking it) is enqueued again.
- The feed's rankings (Trending, category sections and counts: `core.feed_rank`) are recomputed
  when they are FEED_REFRESH_SECONDS old, so no page request pays for the aggregates.

One pass runs at a time across the fleet (a short Redis lock); every step is safe to repeat.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import peewee as pw
from rq.job import JobStatus

from core import dispatch
from core.queue import fetch_job, job_id, next_job_id, redis_conn, worker_alive
from core.songs import retry_or_fail
from models import Generation, Song, utcnow

log = logging.getLogger("tunesmith.reconcile")

LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"re-enqueued {len(self.requeued)} generation(s), retried {len(self.retried)} song(s) of dead "
                f"workers, failed {len(self.failed)} song(s) after their last attempt")


def reconcile(config, grace: float = 30.0) -> Report:
    r = redis_conn(config)
    token = None
    try:
        # short-lived, so a worker killed mid-pass holds the others up for seconds only
        token = r.set(f"tunesmith:{config.QUEUE_NAME}:reconcile-lock", "1", nx=True, px=5000)
        if not token:
            return Report()  # another worker is reconciling right now
    except Exception:  # Redis away: reconcile anyway (every step is idempotent)
        token = None
    try:
        return _reconcile(config, grace)
    finally:
        if token:
            try:
                r.delete(f"tunesmith:{config.QUEUE_NAME}:reconcile-lock")
            except Exception:
                pass


def _reconcile(config, grace: float) -> Report:
    report = Report()
    now = utcnow()
    # Songs whose run stopped beating: their worker is gone (or frozen: then its writes are fenced).
    dead_before = now - timedelta(seconds=config.WORKER_DEATH_SECONDS)
    last_sign = pw.fn.COALESCE(Song.heartbeat_at, Song.started_at, Song.updated_at)
    runs: dict[tuple[str, int], list[Song]] = {}
    for song in Song.select().where((Song.status == "processing") & (last_sign < dead_before)):
        runs.setdefault((song.generation_id, song.attempt), []).append(song)
    for (gen_id, attempt), songs in runs.items():
        gen = Generation.get_by_id(gen_id)
        job = fetch_job(config, job_id(gen_id, attempt))
        if job is not None:
            _delete_job(job)
        if retry_or_fail(config, gen, songs, attempt) == "failed":
            report.failed += [s.id for s in songs]
        else:
            report.retried += [s.id for s in songs]
    # Generations with queued songs, no live job and not waiting in their owner's pending list.
    # A job marked started by a worker that is gone (killed before the job's first write) is dead.
    queued = (Generation.select().join(Song).where(Song.status == "queued")
              .where(Generation.created_at < now - timedelta(seconds=grace)).distinct())
    r = redis_conn(config)
    for gen in queued:
        job = fetch_job(config, next_job_id(gen))
        status = job.get_status(refresh=True) if job is not None else None
        if status == JobStatus.STARTED and not _job_alive(config, job):
            status = None
        elif status == JobStatus.QUEUED and _lost_in_dequeue(config, r, job):
            status = None
        if status in LIVE or r.lpos(dispatch.pending_key(config, gen.user_id), gen.id) is not None:
            continue
        if job is not None:
            _delete_job(job)
        dispatch.add_pending(config, gen, dispatch_now=False)
        report.requeued.append(gen.id)
    dispatch.rebuild(config)  # after dead jobs are gone, so their owners' slots are free again
    dispatch.dispatch(config)
    _maybe_sweep(config, r)
    refresh_feed(config)
    if report.requeued or report.failed or report.retried:
        log.warning("reconcile: %s", report.summary())
    return report


def refresh_feed(config) -> None:
    """The feed's rankings, when FEED_REFRESH_SECONDS old (the stored refresh time decides, so
    the whole fleet refreshes about once per interval, Redis or not)."""
    from core import feed_rank

    try:
        feed_rank.maybe_refresh(config)
    except Exception:  # the database away: the next pass tries again; pages keep the last rankings
        log.exception("feed refresh failed")


def _maybe_sweep(config, r) -> None:
    """The storage sweep, at most once per STORAGE_SWEEP_INTERVAL across the fleet."""
    if config.STORAGE_SWEEP_INTERVAL <= 0:
        return
    from core.storage import get_storage
    from core.sweep import sweep

    try:
        if not r.set(f"tunesmith:{config.QUEUE_NAME}:swept", "1", nx=True, ex=config.STORAGE_SWEEP_INTERVAL):
            return
        sweep(get_storage(config), grace=config.STORAGE_SWEEP_GRACE)
    except Exception:  # the store away: the next interval tries again
        log.exception("storage sweep failed")


def _delete_job(job) -> None:
    """Delete a dead job so its generation can be enqueued again under the same id. RQ's own
    delete fails for a minute after a killed worker's execution record expired (the record is
    still listed, but gone): then drop the job's keys and its started-registry entries by hand.
    A worker still registered as running it (killed, its key not yet expired) stops pointing at
    it, so RQ's tools (the dashboard's worker list) do not trip over a job that is gone."""
    worker_name = getattr(job, "worker_name", None)
    if worker_name:
        key = f"rq:worker:{worker_name}"
        if (job.connection.hget(key, "current_job") or b"").decode() == job.id:
            job.connection.hdel(key, "current_job")
    try:
        job.delete()
    except ValueError:
        from rq.registry import StartedJobRegistry

        conn = job.connection
        registry = StartedJobRegistry(job.origin, connection=conn)
        stale = [e for e in conn.zrange(registry.key, 0, -1) if e.decode().split(":", 1)[0] == job.id]
        if stale:
            conn.zrem(registry.key, *stale)
        conn.delete(job.key, job.execution_registry.key)


def _lost_in_dequeue(config, r, job) -> bool:
    """A job marked queued that is no longer in its queue was popped by a worker that never
    started it: Redis hands a pushed job to the first worker blocked on the queue, and one that
    froze (SIGSTOP, a stalled VM) or died while it waited keeps it in a socket buffer nobody
    reads. After WORKER_DEATH_SECONDS (a live worker marks a popped job started within
    milliseconds) the job is enqueued again; should the frozen worker wake and run it too, the
    songs' conditional claim lets only one of them make the songs."""
    enqueued = getattr(job, "enqueued_at", None)
    if enqueued is None:
        return False
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=timezone.utc)
    if datetime.now(timezone.utc) - enqueued < timedelta(seconds=config.WORKER_DEATH_SECONDS):
        return False
    try:
        return r.lpos(f"rq:queue:{job.origin}", job.id) is None
    except Exception:  # Redis away: nothing is lost that we can tell
        return False


def _job_alive(config, job) -> bool:
    """A started job whose worker still heartbeats is alive even when slow; one whose GPU worker
    stopped beating WORKER_DEATH_SECONDS ago (killed between taking the job and its first write)
    is dead."""
    worker_name = getattr(job, "worker_name", None)
    if not worker_name:
        return False
    return worker_alive(job.connection, worker_name, config.WORKER_DEATH_SECONDS)
