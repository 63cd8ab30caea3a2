"""The worker's database writes ride out a short database outage.

A job's writes (its claim, stage and progress, the seeds, each song's finish or failure) go
through `db_retry`: when the connection fails (PostgreSQL restarted, a network cut, SQLite
busy), the broken connection is dropped and the write is tried again on a new one, with
back-off, for at most WORKER_DB_RETRY_SECONDS; then the error goes up as before (the job
fails, or — when the database is still away — the reconciler later retries the songs from
their stale heartbeat).

Every write retried here is safe to repeat: status changes are conditional UPDATEs from the
state they expect, the credit settlement has a unique ledger ref, and `finish_song` answers
True when an earlier try of the same run already committed (a commit whose answer was lost).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import peewee

import models

log = logging.getLogger("tunesmith.worker")
T = TypeVar("T")
RETRIED = (peewee.OperationalError, peewee.InterfaceError)


def drop_connection() -> None:
    """Forget this thread's connection without returning a broken one to the pool."""
    db = models.db
    try:
        if hasattr(db.obj, "manual_close"):
            db.manual_close()
        else:
            db.close()
    except Exception:  # the connection is already gone: reset the thread's state
        db.obj._state.reset()


def db_retry(fn: Callable[[], T], seconds: float | None = None, *, first_delay: float = 0.25,
             max_delay: float = 5.0, sleep=time.sleep) -> T:
    """Call `fn()`; on a connection error drop the connection, wait (doubling from
    `first_delay` to `max_delay`) and call it again, for at most `seconds` in all (default
    WORKER_DB_RETRY_SECONDS); then re-raise the last error."""
    if seconds is None:
        from jobs import runtime

        seconds = float(runtime.config().WORKER_DB_RETRY_SECONDS)
    deadline = time.monotonic() + max(0.0, seconds)
    delay = first_delay
    tries = 0
    while True:
        try:
            result = fn()
            if tries:
                log.warning("database reachable again after %d retried write(s)", tries)
            return result
        except RETRIED as exc:
            drop_connection()
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("database write failed for %.0f s; giving up: %s", seconds, exc)
                raise
            tries += 1
            log.warning("database write failed (%s); retrying in %.1f s", str(exc).strip()[:200], min(delay, left))
            sleep(min(delay, left))
            delay = min(max_delay, delay * 2)
            try:
                models.db.connect(reuse_if_open=True)
            except RETRIED:
                drop_connection()  # still away: the next try reconnects
