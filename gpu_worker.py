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

import models
from config import Config
from jobs import runtime
from core.queue import get_queue, redis_conn

log = logging.getLogger("tunesmith.worker")
HEARTBEAT_KEY = "tunesmith:worker-heartbeat:{name}"
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

    def _heartbeat_loop(self):
        """Beat in Redis (for `--check` and /metrics) and on the songs of the running job (in
        the database: the reconciler's sign of life, which outlives a Redis restart)."""
        key = HEARTBEAT_KEY.format(name=self.name)
        ttl = self.tunesmith_config.WORKER_HEARTBEAT_TTL
        every = max(0.5, min(ttl / 4, self.tunesmith_config.WORKER_DEATH_SECONDS / 6))
        while not self._stop.is_set():
            try:
                self.connection.set(key, str(time.time()), ex=ttl)
            except Exception as exc:  # Redis briefly away: try again next beat
                log.warning("heartbeat failed: %s", exc)
            self._beat_songs()
            self._stop.wait(every)

    def _beat_songs(self):
        running = runtime.current()
        if running is None:
            return
        gen_id, attempt = running
        try:
            models.db.connect(reuse_if_open=True)
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
        except Exception:
            log.exception("reconciler pass failed")
        finally:
            if not models.db.is_closed():
                models.db.close()

    def _reconcile_loop(self):
        while not self._stop.wait(self.reconcile_interval):
            self._reconcile_once()

    def teardown(self):
        self._stop.set()
        try:
            self.connection.delete(HEARTBEAT_KEY.format(name=self.name))
        except Exception:
            pass
        super().teardown()


def build_worker(config: Config, queue_names: list[str] | None = None, init_database: bool = True,
                 **kwargs) -> GpuWorker:
    if init_database:
        models.init_db(config.DATABASE_URL, config.DATABASE_POOL_SIZE)
    runtime.configure(config)
    names = queue_names or [config.HIGH_QUEUE_NAME, config.QUEUE_NAME]
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
    worker = build_worker(config, args.queue, name=args.name)
    worker.work(burst=args.burst, logging_level=config.LOG_LEVEL, with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
