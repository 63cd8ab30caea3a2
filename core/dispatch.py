"""Fair hand-off from the database to the RQ queues.

A submitted generation first waits in its owner's pending list in Redis. The dispatcher moves
work into RQ round-robin across the users who are waiting, never letting one user hold more than
MAX_RUNNING_PER_USER generations in RQ (queued there or running) at once. So one person's burst
of ten cannot starve the next person: their first song goes into RQ as soon as it is submitted.
Paying users' work goes to the `high` queue, which workers serve first (with a guaranteed share
for `default`, see gpu_worker.GpuWorker.reorder_queues).

Redis is only the hand-off: the reconciler rebuilds these lists and counters from the database
when Redis lost them. Every step is safe to repeat: RQ refuses a second job with the same id
(the generation id and its run), and a generation is never put twice into a pending list.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager

from core.queue import enqueue_generation, get_queue, job_id, next_job_id, redis_conn

log = logging.getLogger("tunesmith.dispatch")


def _k(config, name: str) -> str:
    return f"tunesmith:{config.QUEUE_NAME}:{name}"


def pending_key(config, user_id) -> str:
    return _k(config, f"pending:{user_id}")


def ring_key(config) -> str:
    return _k(config, "ring")


def active_key(config) -> str:
    return _k(config, "active")


def cancel_key(config, generation_id: str) -> str:
    return _k(config, f"cancel:{generation_id}")


def runs_key(config) -> str:
    return _k(config, "runs")


@contextmanager
def _lock(config, timeout: float = 10.0):
    r = redis_conn(config)
    token = uuid.uuid4().hex
    key = _k(config, "dispatch-lock")
    deadline = time.monotonic() + timeout
    while not r.set(key, token, nx=True, px=5000):
        if time.monotonic() > deadline:
            raise TimeoutError("dispatch lock is busy")
        time.sleep(0.005)
    try:
        yield r
    finally:
        # release only our own lock
        r.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
               1, key, token)


def add_pending(config, generation, dispatch_now: bool = True) -> None:
    """Put a committed generation in its owner's pending list (once), then dispatch."""
    r = redis_conn(config)
    pkey = pending_key(config, generation.user_id)
    with _lock(config):
        if r.lpos(pkey, generation.id) is None:
            r.rpush(pkey, generation.id)
        if r.lpos(ring_key(config), str(generation.user_id)) is None:
            r.rpush(ring_key(config), str(generation.user_id))
    if dispatch_now:
        dispatch(config)


def dispatch(config) -> list[str]:
    """Move waiting generations into RQ, round-robin across users, within each user's cap."""
    from models import Generation, User

    cap = max(1, config.MAX_RUNNING_PER_USER)
    moved: list[str] = []
    with _lock(config) as r:
        ring = ring_key(config)
        progress = True
        while progress:
            progress = False
            for _ in range(r.llen(ring)):
                user_id = r.lpop(ring)
                if user_id is None:
                    break
                user_id = user_id.decode()
                pkey = pending_key(config, user_id)
                if int(r.hget(active_key(config), user_id) or 0) < cap:
                    gid = r.lpop(pkey)
                    if gid is not None:
                        gid = gid.decode()
                        gen = Generation.get_or_none(Generation.id == gid)
                        progress = True  # a finished or deleted one is dropped: look again
                        if gen is not None and not gen.is_finished():
                            paying = User.select(User.has_purchased).where(User.id == gen.user_id).scalar()
                            queue = config.HIGH_QUEUE_NAME if paying else config.QUEUE_NAME
                            r.hincrby(active_key(config), user_id, 1)
                            if enqueue_generation(config, gen, queue) is None:
                                r.hincrby(active_key(config), user_id, -1)  # already in RQ
                            else:
                                moved.append(gid)
                                progress = True
                if r.llen(pkey):
                    r.rpush(ring, user_id)
    return moved


def finished(config, generation) -> None:
    """A generation's job ended (any outcome): free its owner's slot and dispatch more."""
    r = redis_conn(config)
    with _lock(config):
        if int(r.hincrby(active_key(config), str(generation.user_id), -1)) < 0:
            r.hset(active_key(config), str(generation.user_id), 0)
    r.delete(cancel_key(config, generation.id))
    dispatch(config)


def position(config, generation) -> int | None:
    """How many generations will start before this one (an estimate for pending ones)."""
    r = redis_conn(config)
    job = next_job_id(generation)  # one query, not one per queue (the status card polls this)
    for name in (config.HIGH_QUEUE_NAME, config.QUEUE_NAME):
        q = get_queue(config, name)
        pos = q.get_job_position(job)
        if pos is not None:
            ahead = pos
            if name == config.QUEUE_NAME:
                ahead += get_queue(config, config.HIGH_QUEUE_NAME).count
            return ahead
    idx = r.lpos(pending_key(config, generation.user_id), generation.id)
    if idx is None:
        return None
    waiting_users = max(1, r.llen(ring_key(config)))
    in_rq = get_queue(config, config.QUEUE_NAME).count + get_queue(config, config.HIGH_QUEUE_NAME).count
    return in_rq + (idx + 1) * waiting_users


def request_cancel(config, generation) -> str:
    """Cancel a generation. Returns "queued" when it was stopped before any worker took it (the
    caller settles its songs at once) or "running" when the worker will stop at its next step."""
    r = redis_conn(config)
    with _lock(config):
        removed = r.lrem(pending_key(config, generation.user_id), 0, generation.id)
        if not removed:
            for name in (config.HIGH_QUEUE_NAME, config.QUEUE_NAME):
                if get_queue(config, name).remove(next_job_id(generation)):
                    removed = 1
                    if int(r.hincrby(active_key(config), str(generation.user_id), -1)) < 0:
                        r.hset(active_key(config), str(generation.user_id), 0)
                    break
    if removed:
        from core.queue import fetch_job

        job = fetch_job(config, next_job_id(generation))
        if job is not None:
            job.delete()
        dispatch(config)
        return "queued"
    r.set(cancel_key(config, generation.id), "1", ex=24 * 3600)
    return "running"


def cancel_requested(config, generation_id: str) -> bool:
    """Whether the owner asked to stop this generation. While Redis is unreachable no cancel can
    be seen, so the job goes on (a Redis blip must not fail the song being made)."""
    from redis.exceptions import RedisError

    try:
        return bool(redis_conn(config).exists(cancel_key(config, generation_id)))
    except RedisError as exc:
        log.warning("cancel flag of %s unreadable (%s); carrying on", generation_id, exc)
        return False


def count_run(config, generation_id: str) -> int:
    """Count job starts per generation (exactly-once checks and metrics)."""
    r = redis_conn(config)
    n = r.hincrby(runs_key(config), generation_id, 1)
    r.expire(runs_key(config), 7 * 24 * 3600)
    return int(n)


def rebuild(config) -> None:
    """Recompute each user's active count from RQ's own state (after a crash or Redis loss)."""
    from peewee import fn

    from models import Generation, Song

    from core.queue import fetch_job
    from rq.job import JobStatus

    r = redis_conn(config)
    counts: dict[str, int] = {}
    gens = Generation.select().join(Song).where(Song.status.in_(["queued", "processing"])).distinct()
    for gen in gens:
        runs = (Song.select(fn.MAX(Song.attempt)).where((Song.generation == gen.id) &
                                                        (Song.status.not_in(Song.FINAL))).scalar()) or 0
        jobs = [fetch_job(config, jid) for jid in dict.fromkeys((job_id(gen.id, runs), job_id(gen.id, runs + 1)))]
        if any(j is not None and j.get_status(refresh=True) in {JobStatus.QUEUED, JobStatus.STARTED} for j in jobs):
            counts[str(gen.user_id)] = counts.get(str(gen.user_id), 0) + 1
    with _lock(config):
        r.delete(active_key(config))
        if counts:
            r.hset(active_key(config), mapping=counts)
