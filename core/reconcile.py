"""The reconciler: the database is the source of truth, Redis only the hand-off.

- A generation with queued songs but no live RQ job (lost with Redis, or failed before it could
  settle its songs) is enqueued again.
- A song stuck in `processing` past its job timeout (its worker died) is failed and its credit
  released, exactly once (the settlement ref is unique).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from rq.job import JobStatus

from core import dispatch
from core.songs import fail_songs
from core.queue import fetch_job, job_timeout, redis_conn
from models import Generation, Song, utcnow

log = logging.getLogger("tunesmith.reconcile")

LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"re-enqueued {len(self.requeued)} generation(s), failed {len(self.failed)} stuck song(s)"


def reconcile(config, grace: float = 30.0) -> Report:
    report = Report()
    now = utcnow()
    # Songs stuck in processing longer than their job could have run.
    for song in Song.select(Song, Generation).join(Generation).where(Song.status == "processing"):
        limit = job_timeout(config, song.generation.duration) + grace
        since = song.started_at or song.updated_at
        if since and now - since > timedelta(seconds=limit):
            job = fetch_job(config, song.generation_id)
            if job is not None and job.get_status(refresh=True) == JobStatus.STARTED and _job_alive(job):
                continue
            fail_songs([song], "The worker making this song stopped; your credit was returned.")
            report.failed.append(song.id)
    # Generations with queued songs, no live job and not waiting in their owner's pending list.
    # A job marked started by a worker that is gone (killed before the job's first write) is dead.
    r = redis_conn(config)
    queued = (Generation.select().join(Song).where(Song.status == "queued")
              .where(Generation.created_at < now - timedelta(seconds=grace)).distinct())
    for gen in queued:
        job = fetch_job(config, gen.id)
        status = job.get_status(refresh=True) if job is not None else None
        if status == JobStatus.STARTED and not _job_alive(job):
            status = None
        if status in LIVE or r.lpos(dispatch.pending_key(config, gen.user_id), gen.id) is not None:
            continue
        if job is not None:
            _delete_job(job)
        dispatch.add_pending(config, gen, dispatch_now=False)
        report.requeued.append(gen.id)
    dispatch.rebuild(config)  # after dead jobs are gone, so their owners' slots are free again
    dispatch.dispatch(config)
    if report.requeued or report.failed:
        log.warning("reconcile: %s", report.summary())
    return report


def _delete_job(job) -> None:
    """Delete a dead job so its generation can be enqueued again under the same id. RQ's own
    delete fails for a minute after a killed worker's execution record expired (the record is
    still listed, but gone): then drop the job's keys and its started-registry entries by hand."""
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


def _job_alive(job) -> bool:
    """A started job whose worker still heartbeats is alive even when slow."""
    worker_name = getattr(job, "worker_name", None)
    if not worker_name:
        return False
    return bool(job.connection.exists(f"rq:worker:{worker_name}"))
