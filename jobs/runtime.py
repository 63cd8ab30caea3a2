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


_runs: dict[str, int] = {}  # generation id -> attempt of each run this process works on now
_runs_lock = threading.Lock()


def begin(generation_id: str, attempt: int) -> None:
    """This process works on `generation_id`'s run `attempt` (the heartbeat beats for it)."""
    with _runs_lock:
        _runs[generation_id] = attempt


def end(generation_id: str, attempt: int | None = None) -> None:
    """The run is over here (finished, failed, or handed to nobody): stop beating for it."""
    with _runs_lock:
        if attempt is None or _runs.get(generation_id) == attempt:
            _runs.pop(generation_id, None)


def running() -> list[tuple[str, int]]:
    """(generation id, attempt) of every run in hand: the job on the GPU and the one whose
    files the finisher is still writing."""
    with _runs_lock:
        return list(_runs.items())


class Finisher:
    """Finishes one job in the background — encode, upload, settle — while the worker starts
    the next job's GPU work. At most one job is in flight: `submit` first waits for the one
    before. A worker killed in this window loses nothing the retry does not cover: the songs
    are still `processing` under the run's attempt and their heartbeat stops with the process."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self.waited = 0.0  # seconds `submit` spent waiting for the previous job (GPU idle)

    def submit(self, work) -> None:
        started = time.perf_counter()
        self.wait()
        self.waited += time.perf_counter() - started
        self._thread = threading.Thread(target=work, name="finisher", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job in flight; True when none is left."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()


_finisher: Finisher | None = None


def enable_overlap(on: bool = True) -> Finisher | None:
    """Let jobs hand their encode and upload to a background finisher (the GPU worker does;
    a job run directly finishes inline)."""
    global _finisher
    _finisher = Finisher() if on else None
    return _finisher


def finisher() -> Finisher | None:
    return _finisher


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
