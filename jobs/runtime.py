"""Process-wide state of a worker: its settings and its engines, loaded once."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("tunesmith.worker")

_lock = threading.Lock()
_config = None
_engines = None
load_count = 0  # how many times engines were loaded in this process (tests and benches read it)
load_seconds = 0.0


_current: tuple[str, int] | None = None  # (generation id, attempt) of the job running now


def set_current(generation_id: str | None, attempt: int = 0) -> None:
    """The run this process works on now; the worker's heartbeat thread beats for it."""
    global _current
    _current = (generation_id, attempt) if generation_id else None


def current() -> tuple[str, int] | None:
    return _current


def configure(config) -> None:
    global _config
    _config = config


def config():
    global _config
    if _config is None:
        from config import Config

        _config = Config()
    return _config


def engines():
    """The engines of this process, loading them on first use only."""
    global _engines, load_count, load_seconds
    if _engines is None:
        with _lock:
            if _engines is None:
                from jobs.engines import load_engines

                started = time.perf_counter()
                _engines = load_engines(config())
                load_seconds = time.perf_counter() - started
                load_count += 1
                log.info("engines loaded in %.2fs: %s", load_seconds, _describe(_engines))
    return _engines


def set_engines(value) -> None:
    global _engines
    _engines = value


def _describe(e) -> str:
    try:
        return e.describe()
    except Exception:
        return repr(e)
