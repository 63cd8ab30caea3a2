"""Job metrics shared across processes and machines: the worker adds to a few Redis hashes at the
end of each job; the web's /metrics reads them at scrape time. Counters only grow, and
histograms keep per-bucket counts plus a sum and a count, so several workers simply add up.

    tunesmith:metrics:jobs          "<outcome>|<reason>"  -> jobs
    tunesmith:metrics:songs         "<outcome>"           -> songs
    tunesmith:metrics:job_seconds   "<outcome>|<le>|sum|count" histogram fields
    tunesmith:metrics:stage_seconds "<stage>|<le>|sum|count"   histogram fields

Recording never fails a job: a Redis error is logged and the job's result stands.
"""
from __future__ import annotations

import logging
import math
import time
from functools import wraps

log = logging.getLogger("tunesmith.metrics")

PREFIX = "tunesmith:metrics"
JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, math.inf)
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, math.inf)
REASONS = {"engine", "storage", "oom", "timeout", "fatal", "cancelled"}  # anything else is "other"


def _le(value: float, buckets) -> str:
    for bound in buckets:
        if value <= bound:
            return "+Inf" if bound == math.inf else repr(float(bound))
    return "+Inf"


def _observe(pipe, key: str, label: str, value: float, buckets) -> None:
    pipe.hincrby(key, f"{label}|{_le(value, buckets)}", 1)
    pipe.hincrbyfloat(key, f"{label}|sum", float(value))
    pipe.hincrby(key, f"{label}|count", 1)


def classify(result: dict | None, exc: BaseException | None) -> tuple[str, str, int]:
    """(outcome, reason, songs) for a job's return value or the exception it raised."""
    if exc is not None:
        name = type(exc).__name__
        reason = "timeout" if name == "JobTimeoutException" else "fatal" if isinstance(exc, SystemExit) else "other"
        return "failed", reason, 0
    result = result or {}
    if "processed" in result:
        return "processed", "", int(result["processed"])
    if "failed" in result:
        reason = str(result.get("error", ""))
        return "failed", reason if reason in REASONS else "other", int(result["failed"])
    return "skipped", "", 0


def prefix_for(config) -> str:
    """`METRICS_PREFIX` (a setting, so a test or a second deployment on one Redis can keep its own)."""
    return config.METRICS_PREFIX or PREFIX


def record(conn, result: dict | None, seconds: float, exc: BaseException | None = None,
           prefix: str = PREFIX) -> None:
    outcome, reason, songs = classify(result, exc)
    pipe = conn.pipeline(transaction=False)
    pipe.hincrby(f"{prefix}:jobs", f"{outcome}|{reason}", 1)
    if songs:
        pipe.hincrby(f"{prefix}:songs", outcome, songs)
    if outcome != "skipped":
        _observe(pipe, f"{prefix}:job_seconds", outcome, seconds, JOB_BUCKETS)
    for stage, value in ((result or {}).get("stages") or {}).items():
        _observe(pipe, f"{prefix}:stage_seconds", str(stage), float(value), STAGE_BUCKETS)
    pipe.execute()


def recorded(get_config):
    """Decorator for a job body: records outcome, duration and stage seconds of every run
    (returned results, failures and exceptions such as the job timeout alike) under the
    settings `get_config()` returns (the worker's)."""

    def decorate(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            result = error = None
            try:
                result = fn(*args, **kwargs)
                return result
            except BaseException as exc:
                error = exc
                raise
            finally:
                if not (isinstance(result, dict) and result.get("handed_off")):  # else the finisher records it
                    try:
                        from core.queue import redis_conn

                        cfg = get_config()
                        record(redis_conn(cfg), result if isinstance(result, dict) else None,
                               time.perf_counter() - started, error, prefix_for(cfg))
                    except Exception as exc:  # metrics must never fail a job
                        log.warning("could not record job metrics: %s", exc)

        return wrapper

    return decorate


def _histograms(raw: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for field, value in raw.items():
        label, _, part = field.rpartition("|")
        h = out.setdefault(label, {"buckets": {}, "sum": 0.0, "count": 0})
        if part == "sum":
            h["sum"] = float(value)
        elif part == "count":
            h["count"] = int(value)
        else:
            h["buckets"][part] = int(value)
    return out


def read(conn, prefix: str = PREFIX) -> dict:
    """Everything recorded so far: {"jobs": {(outcome, reason): n}, "songs": {outcome: n},
    "job_seconds": {outcome: hist}, "stage_seconds": {stage: hist}}; a hist has per-bucket
    (not cumulative) counts keyed by upper bound ("0.5", ..., "+Inf"), "sum" and "count"."""
    pipe = conn.pipeline(transaction=False)
    for name in ("jobs", "songs", "job_seconds", "stage_seconds"):
        pipe.hgetall(f"{prefix}:{name}")
    jobs, songs, job_seconds, stage_seconds = [
        {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in raw.items()} for raw in pipe.execute()]
    return {
        "jobs": {tuple(k.split("|", 1)): int(v) for k, v in jobs.items()},
        "songs": {k: int(v) for k, v in songs.items()},
        "job_seconds": _histograms(job_seconds),
        "stage_seconds": _histograms(stage_seconds),
    }


def bucket_bounds(buckets) -> list[str]:
    return ["+Inf" if b == math.inf else repr(float(b)) for b in buckets]
