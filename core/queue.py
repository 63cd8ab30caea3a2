"""The hand-off between web and worker: RQ queues on Redis. Jobs are enqueued by dotted path so
the web process never imports the engines."""
from __future__ import annotations

from functools import lru_cache

from redis import Redis
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job

GENERATE_JOB = "jobs.generate.run"
TRAIN_STYLE_JOB = "jobs.styles.run"
WORKER_HEARTBEAT_KEY = "tunesmith:worker-heartbeat:{name}"  # a GPU worker's sign of life (epoch seconds)
WORKER_MARK = "tunesmith_heartbeat"  # field on RQ's worker hash: this worker keeps that key


@lru_cache(maxsize=8)
def _redis(url: str) -> Redis:
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)


def redis_conn(config) -> Redis:
    return _redis(config.REDIS_URL)


def get_queue(config, name: str | None = None) -> Queue:
    return Queue(name or config.QUEUE_NAME, connection=redis_conn(config))


def job_id(generation_id: str, attempt: int) -> str:
    """The RQ job id of a generation's run `attempt` (1, 2, ...): the generation id for the first
    run, so enqueuing it twice is refused by RQ; a retry gets its own id."""
    return generation_id if attempt <= 1 else f"{generation_id}-{attempt}"


def next_job_id(generation) -> str:
    """The job id of the generation's next run (1 + the runs its unfinished songs have had)."""
    from peewee import fn

    from models import Song

    done = (Song.select(fn.MAX(Song.attempt)).where((Song.generation == generation.id) &
                                                    (Song.status.not_in(Song.FINAL))).scalar()) or 0
    return job_id(generation.id, done + 1)


def job_timeout(config, duration: float) -> int:
    return int(config.JOB_TIMEOUT_BASE + config.JOB_TIMEOUT_PER_SECOND * float(duration))


def enqueue_generation(config, generation, queue_name: str | None = None) -> Job | None:
    """Enqueue the job for `generation` (call only after the database commit).

    The job id names the generation and its run (`next_job_id`): enqueuing twice is refused by
    RQ (unique), so a retry of this call or a reconciler pass cannot start the same run twice.
    """
    queue = get_queue(config, queue_name)
    try:
        return queue.enqueue(
            GENERATE_JOB, generation.id,
            job_id=next_job_id(generation), unique=True,
            job_timeout=job_timeout(config, generation.duration),
            result_ttl=300, failure_ttl=7 * 24 * 3600,
            description=f"generation {generation.id} ({generation.variants} variant(s), {generation.duration}s)",
        )
    except DuplicateJobError:
        return None


def style_job_id(style_id: str, attempt: int = 1) -> str:
    return f"style-{style_id}" if attempt <= 1 else f"style-{style_id}-{attempt}"


def enqueue_style(config, style) -> Job | None:
    """Enqueue the training of `style` on STYLE_TRAIN_QUEUE (after the database commit); its
    own queue, so song jobs never wait behind a training on workers that do not serve it."""
    queue = get_queue(config, config.STYLE_TRAIN_QUEUE)
    try:
        return queue.enqueue(
            TRAIN_STYLE_JOB, style.id, job_id=style_job_id(style.id, style.attempt + 1), unique=True,
            job_timeout=int(config.STYLE_TRAIN_TIMEOUT), result_ttl=300, failure_ttl=7 * 24 * 3600,
            description=f"style {style.id} training")
    except DuplicateJobError:
        return None


def fetch_job(config, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=redis_conn(config))
    except NoSuchJobError:
        return None


def worker_alive(conn, name: str, death_seconds: float) -> bool:
    """Whether the RQ worker `name` is alive: a GPU worker (marked on RQ's worker hash) while its
    own heartbeat is younger than `death_seconds` — RQ's key of a killed worker outlives it by the
    job timeout — and any other worker while RQ's key exists."""
    import time

    rq_key = f"rq:worker:{name}"
    marked, = conn.hmget(rq_key, [WORKER_MARK])
    if marked is None:
        return bool(conn.exists(rq_key))
    beat = conn.get(WORKER_HEARTBEAT_KEY.format(name=name))
    return beat is not None and time.time() - float(beat) < death_seconds

