"""The long-lived GPU worker: loads every engine once, then serves RQ queues in-process.

RQ's default worker forks a child per job and CUDA state does not survive a fork, so this is a
SimpleWorker (no fork) that loads the engines before its first job. A reconciler runs at start
and every RECONCILE_INTERVAL seconds; a heartbeat key lets `python gpu_worker.py --check` tell a
container health check whether the worker is alive (also during a long job).

    python gpu_worker.py            serve forever (SIGTERM: finish the current job, then exit)
    python gpu_worker.py --burst    serve until the queues are empty
    python gpu_worker.py --check    exit 0 when a worker heartbeat is fresh, 1 otherwise
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time

from rq import SimpleWorker
from rq.exceptions import StopRequested

import models
from config import Config
from core import capabilities
from core.queue import WORKER_HEARTBEAT_KEY, WORKER_MARK, get_queue, redis_conn
from jobs import runtime

log = logging.getLogger("tunesmith.worker")
HEARTBEAT_KEY = WORKER_HEARTBEAT_KEY
HEARTBEAT_PATTERN = "tunesmith:worker-heartbeat:*"


class GpuWorker(SimpleWorker):
    """SimpleWorker that owns the engines and runs the reconciler and a heartbeat beside jobs."""

    def __init__(self, queues, *args, config: Config, reconcile_interval: float | None = None, **kwargs):
        super().__init__(queues, *args, **kwargs)
        self.tunesmith_config = config
        self.reconcile_interval = config.RECONCILE_INTERVAL if reconcile_interval is None else reconcile_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def reorder_queues(self, reference_queue):
        """Serve queues in order (high first), but after HIGH_QUEUE_BURST jobs in a row from the
        first queue put the others first for one dequeue, so `default` is never starved."""
        names = [q.name for q in self._ordered_queues]
        burst = max(1, self.tunesmith_config.HIGH_QUEUE_BURST)
        if len(self.queues) < 2:
            return
        if reference_queue.name == self.queues[0].name:
            self._high_streak = getattr(self, "_high_streak", 0) + 1
        else:
            self._high_streak = 0
        if self._high_streak >= burst:
            self._high_streak = 0
            self._ordered_queues = self.queues[1:] + self.queues[:1]
        elif names[0] != self.queues[0].name:
            self._ordered_queues = list(self.queues)

    def bootstrap(self, *args, **kwargs):
        super().bootstrap(*args, **kwargs)
        runtime.enable_overlap(self.tunesmith_config.WORKER_OVERLAP)
        self.connection.hset(self.key, WORKER_MARK, "1")  # the reconciler reads this worker's own heartbeat
        engines = runtime.engines()  # load once, before the first job
        log.info("worker %s ready; engines: %s", self.name, getattr(engines, "describe", lambda: engines)())
        self._start_background()

    def _start_background(self):
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)
        if self.reconcile_interval > 0:
            self._reconcile_once()
            rec = threading.Thread(target=self._reconcile_loop, name="reconciler", daemon=True)
            rec.start()
            self._threads.append(rec)
            if self.tunesmith_config.WEBHOOK_POLL_INTERVAL > 0:  # outbound webhooks, beside the jobs
                from core.webhooks import run_loop

                hooks = threading.Thread(target=run_loop, args=(self.tunesmith_config, self._stop),
                                         name="webhooks", daemon=True)
                hooks.start()
                self._threads.append(hooks)

    def _heartbeat_loop(self):
        """Beat in Redis (for `--check` and /metrics) and on the songs of the running job (in
        the database: the reconciler's sign of life, which outlives a Redis restart)."""
        key = HEARTBEAT_KEY.format(name=self.name)
        ttl = self.tunesmith_config.WORKER_HEARTBEAT_TTL
        every = max(0.5, min(ttl / 4, self.tunesmith_config.WORKER_DEATH_SECONDS / 6))
        caps = dict(capabilities.engine_caps(runtime.engines()), queues=[q.name for q in self.queues])
        while not self._stop.is_set():
            try:
                self.connection.set(key, str(time.time()), ex=ttl)
                capabilities.record(self.connection, self.name, caps, ttl)  # what the web may accept
            except Exception as exc:  # Redis briefly away: try again next beat
                log.warning("heartbeat failed: %s", exc)
            self._beat_songs()
            self._stop.wait(every)

    def _beat_songs(self):
        runs = runtime.running()  # the job on the GPU and the one the finisher is writing
        if not runs:
            return
        try:
            models.db.connect(reuse_if_open=True)
            for gen_id, attempt in runs:
                models.Song.update(heartbeat_at=models.utcnow()).where(
                    (models.Song.generation == gen_id) & (models.Song.attempt == attempt) &
                    (models.Song.status == "processing")).execute()
        except Exception as exc:  # the database briefly away: the next beat tries again
            log.warning("song heartbeat failed: %s", exc)
        finally:
            if not models.db.is_closed():
                models.db.close()

    def _reconcile_once(self):
        from core.reconcile import reconcile

        try:
            models.db.connect(reuse_if_open=True)
            reconcile(self.tunesmith_config)
            if self.tunesmith_config.STYLE_TRAIN_QUEUE in [q.name for q in self.queues]:
                from core.styles import recover

                recover(self.tunesmith_config)  # styles left queued without a job, or by a dead worker
        except Exception:
            log.exception("reconciler pass failed")
        finally:
            if not models.db.is_closed():
                models.db.close()

    def _reconcile_loop(self):
        while not self._stop.wait(self.reconcile_interval):
            self._reconcile_once()

    def teardown(self):
        finisher = runtime.finisher()
        if finisher is not None and not finisher.wait(0):
            log.info("worker %s: waiting for the last job's files to be written", self.name)
            finisher.wait()  # bounded: storage and database retries are
        runtime.enable_overlap(False)  # jobs run in this process after the worker finish inline
        self._stop.set()
        try:
            self.connection.delete(HEARTBEAT_KEY.format(name=self.name))
            capabilities.forget(self.connection, self.name)
        except Exception:
            pass
        super().teardown()


def worker_queues(config: Config) -> list[str]:
    """The queues a worker serves by default: WORKER_QUEUES, or high, default and the
    style-training queue (last: a training starts only when no song job waits here)."""
    names = [n.strip() for n in str(getattr(config, "WORKER_QUEUES", "") or "").split(",") if n.strip()]
    return names or [config.HIGH_QUEUE_NAME, config.QUEUE_NAME, config.STYLE_TRAIN_QUEUE]


def build_worker(config: Config, queue_names: list[str] | None = None, init_database: bool = True,
                 **kwargs) -> GpuWorker:
    if init_database:
        models.init_db(config.DATABASE_URL, config.DATABASE_POOL_SIZE)
    runtime.configure(config)
    names = queue_names or worker_queues(config)
    queues = [get_queue(config, n) for n in names]
    name = kwargs.pop("name", None) or f"gpu-{socket.gethostname()}-{os.getpid()}"
    return GpuWorker(queues, connection=redis_conn(config), config=config, name=name, **kwargs)


def check(config: Config) -> int:
    """Exit status for a health check: 0 when some worker heartbeat is fresh."""
    conn = redis_conn(config)
    name = os.environ.get("WORKER_NAME")
    keys = [HEARTBEAT_KEY.format(name=name)] if name else list(conn.scan_iter(HEARTBEAT_PATTERN))
    now = time.time()
    fresh = [k for k in keys if (v := conn.get(k)) and now - float(v) < config.WORKER_HEARTBEAT_TTL]
    print(f"{len(fresh)} live worker(s)" if fresh else "no live worker heartbeat")
    return 0 if fresh else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--check", action="store_true", help="health check: is a worker heartbeat fresh?")
    parser.add_argument("--queue", action="append", help="queue name(s) to serve (default: QUEUE_NAME)")
    parser.add_argument("--name", help="worker name (default: gpu-<host>-<pid>)")
    args = parser.parse_args(argv)
    config = Config()
    from core.logs import install as install_logging

    install_logging(config.LOG_LEVEL)
    if args.check:
        return check(config)
    return serve(config, args.queue, args.name, burst=args.burst)


def serve(config: Config, queue_names=None, name: str | None = None, burst: bool = False,
          max_wait: float = 30.0) -> int:
    """Serve until asked to stop, riding out Redis outages: when RQ's loop ends because Redis
    went away (RQ quits on a lost connection), wait for Redis with back-off (1 s doubling to
    `max_wait`) and serve again in this process, with the engines still loaded. A loop that
    keeps ending while Redis answers is a real fault: after 5 such ends the process exits 1, for
    its process manager to restart it."""
    from redis.exceptions import RedisError

    try:
        return _serve(config, queue_names, name, burst, max_wait)
    except StopRequested:  # SIGTERM while waiting for Redis: nothing in hand, stop now
        return 0


def _serve(config, queue_names, name, burst, max_wait) -> int:
    from redis.exceptions import RedisError

    base = name or f"gpu-{socket.gethostname()}-{os.getpid()}"
    incarnation = quick_ends = 0
    while True:
        worker = build_worker(config, queue_names, name=base if incarnation == 0 else f"{base}-r{incarnation}")
        started = time.monotonic()
        try:
            worker.work(burst=burst, logging_level=config.LOG_LEVEL, with_scheduler=False)
        except RedisError as exc:
            log.warning("worker %s lost Redis: %s", worker.name, exc)
        if burst or worker._stop_requested or worker._shutdown_requested_date is not None:
            return 0  # asked to stop (SIGTERM), or a burst is done
        redis_down = not _redis_answers(config)
        if not redis_down:
            quick_ends = quick_ends + 1 if time.monotonic() - started < 60 else 0
            if quick_ends >= 5:
                log.error("the worker loop keeps ending while Redis answers; exiting for a restart")
                return 1
        wait = 1.0
        while not _redis_answers(config):
            log.warning("Redis unreachable; the worker waits %.0f s and tries again (engines stay loaded)", wait)
            time.sleep(wait)
            wait = min(max_wait, wait * 2)
        incarnation += 1
        log.warning("Redis answers again: serving as %s-r%d", base, incarnation)


def _redis_answers(config: Config) -> bool:
    try:
        return bool(redis_conn(config).ping())
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
