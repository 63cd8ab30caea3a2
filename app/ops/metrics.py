"""Prometheus metrics for /metrics.

- HTTP request latency: a histogram in this process (with gunicorn's several workers set
  PROMETHEUS_MULTIPROC_DIR and every worker's samples are merged at scrape time).
- Queue depth, live workers, jobs by outcome, job duration, per-stage seconds, songs generated:
  read from Redis at scrape time (the worker writes them there: core/metrics.py), so they hold
  across processes and machines.
- Songs by status and credits spent: read from the database at scrape time.
"""
from __future__ import annotations

import logging
import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from core import metrics as job_metrics
from core.queue import redis_conn

log = logging.getLogger("tunesmith.metrics")

HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_LATENCY = Histogram(
    "tunesmith_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
    ["method", "route", "status"], registry=HTTP_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_LATENCY.labels(method, route, str(status)).observe(seconds)


def _http_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return HTTP_REGISTRY


def _hist(name: str, doc: str, label: str, hists: dict, bounds: list[str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, h in sorted(hists.items()):
        running, buckets = 0, []
        for bound in bounds:
            running += h["buckets"].get(bound, 0)
            buckets.append((bound, running))
        family.add_metric([value], buckets, h["sum"])
    return family


class ScrapeCollector:
    """Reads Redis and the database when /metrics is scraped."""

    def __init__(self, config):
        self.config = config

    def collect(self):
        errors = GaugeMetricFamily("tunesmith_scrape_error", "1 when a source could not be read for this scrape.",
                                   labels=["source"])
        try:
            yield from self._redis()
            errors.add_metric(["redis"], 0)
        except Exception as exc:
            log.warning("metrics: redis unreadable: %s", exc)
            errors.add_metric(["redis"], 1)
        try:
            yield from self._database()
            errors.add_metric(["database"], 0)
        except Exception as exc:
            log.warning("metrics: database unreadable: %s", exc)
            errors.add_metric(["database"], 1)
        yield errors

    def _redis(self):
        from rq import Queue
        from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

        conn = redis_conn(self.config)
        depth = GaugeMetricFamily("tunesmith_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"])
        states = GaugeMetricFamily("tunesmith_queue_jobs", "Jobs per RQ queue by registry.", labels=["queue", "state"])
        names = {q.name for q in Queue.all(connection=conn)} | {self.config.QUEUE_NAME}
        if getattr(self.config, "HIGH_QUEUE_NAME", None):
            names.add(self.config.HIGH_QUEUE_NAME)
        for name in sorted(names):
            queue = Queue(name, connection=conn)
            depth.add_metric([name], queue.count)
            for state, registry in (("started", StartedJobRegistry), ("failed", FailedJobRegistry),
                                    ("deferred", DeferredJobRegistry), ("scheduled", ScheduledJobRegistry)):
                states.add_metric([name, state], registry(name, connection=conn).get_job_count(cleanup=False))

        now, fresh = time.time(), 0
        for key in conn.scan_iter("tunesmith:worker-heartbeat:*", count=100):
            value = conn.get(key)
            try:
                fresh += bool(value) and now - float(value) < self.config.WORKER_HEARTBEAT_TTL
            except ValueError:
                continue
        workers = GaugeMetricFamily("tunesmith_workers_alive", "GPU workers with a fresh heartbeat.", value=fresh)

        data = job_metrics.read(conn, job_metrics.prefix_for(self.config))
        jobs = CounterMetricFamily("tunesmith_jobs", "Generation jobs run, by outcome.", labels=["outcome", "reason"])
        for (outcome, reason), n in sorted(data["jobs"].items()):
            jobs.add_metric([outcome, reason], n)
        songs = CounterMetricFamily("tunesmith_songs_generated", "Songs the workers finished, by outcome.",
                                    labels=["outcome"])
        for outcome in ("processed", "failed"):
            songs.add_metric([outcome], data["songs"].get(outcome, 0))
        yield from (depth, states, workers, jobs, songs)
        yield _hist("tunesmith_job_duration_seconds", "Wall time of generation jobs, by outcome.", "outcome",
                    data["job_seconds"], job_metrics.bucket_bounds(job_metrics.JOB_BUCKETS))
        yield _hist("tunesmith_job_stage_seconds", "Seconds spent in each stage of a generation job.", "stage",
                    data["stage_seconds"], job_metrics.bucket_bounds(job_metrics.STAGE_BUCKETS))

    def _database(self):
        import peewee as pw

        from models import CreditEntry, Song

        by_status = dict(Song.select(Song.status, pw.fn.COUNT(Song.id)).group_by(Song.status).tuples())
        songs = GaugeMetricFamily("tunesmith_songs", "Songs in the library by status.", labels=["status"])
        for status in Song.STATUSES:
            songs.add_metric([status], by_status.get(status, 0))
        net = (CreditEntry.select(pw.fn.COALESCE(pw.fn.SUM(CreditEntry.delta), 0))
               .where(CreditEntry.kind.in_(("reserve", "release"))).scalar()) or 0
        spent = CounterMetricFamily("tunesmith_credits_spent", "Credits spent on songs (reserved minus given back).",
                                    value=max(0, -int(net)))
        yield from (songs, spent)


def render(config) -> tuple[bytes, str]:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ScrapeCollector(config))
    return generate_latest(_http_registry()) + generate_latest(scrape), CONTENT_TYPE_LATEST
