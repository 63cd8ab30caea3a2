"""The GPU worker exactly as `python gpu_worker.py` runs it, with timestamps for the benchmarks.

    python bench/bench_worker.py RECORD_KEY [--engines stub|settings] [--name NAME]

Settings come from the environment like the real worker's. The only additions are records
pushed to the Redis list RECORD_KEY (JSON, one per event):

- `{"event": "ready", ...}` once the worker has bootstrapped (engines loaded, before any job):
  seconds from process start, the engines' load count and seconds;
- `{"event": "job", ...}` per job: the wall-clock time `jobs.generate.run` was entered
  (`time.time()`, for the hand-off figure), its wall seconds, the job's own result (per-stage
  seconds) and the load counters before and after the job (for the residency figure).

`--engines stub` puts no-op engines in place (instant writer, 0.1 s of silence, a 1-pixel
cover) so the queue hand-off can be timed over hundreds of jobs through the real job code; with
`settings` (default) the worker loads whatever ENGINE / MODEL_DIR select, as in production.
"""
from __future__ import annotations

import time

STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cfc0f01f0005000201e2263fd90000000049454e44ae426082")


def stub_engines():
    """Engines that do (almost) nothing, so a job's time is the worker's own."""
    import numpy as np

    from jobs.engines import Engines
    from jobs.engines.base import RenderedAudio, SongSpec

    class Writer:
        name, offline = "bench-stub-writer", True

        def write(self, request):
            return SongSpec(title="Bench", tags="bench, 120 bpm", lyrics="[verse]\nla", categories=["Bench"],
                            bpm=120, key="C major", time_signature="4/4")

    class Music:
        name, offline, sample_rate = "bench-stub-music", True, 48000

        def render(self, requests, progress=None):
            silence = np.zeros((4800, 2), dtype=np.float32)
            if progress:
                progress(1.0)
            return [RenderedAudio(silence, self.sample_rate, r.seed, r.steps, r.guidance) for r in requests]

    class Cover:
        name, offline = "bench-stub-cover", True

        def paint(self, title, tags, seed):
            return PNG_1PX

    return Engines(writer=Writer(), music=Music(), cover=Cover(), reasons={"music": "bench stub"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("record_key")
    ap.add_argument("--engines", choices=("stub", "settings"), default="settings")
    ap.add_argument("--name", default=f"bench-worker-{os.getpid()}")
    args = ap.parse_args(argv)

    import gpu_worker
    from core.logs import install as install_logging
    from config import Config
    from jobs import generate, runtime
    from jobs.engines import LOAD_COUNTS
    from core.queue import redis_conn

    config = Config()
    install_logging(config.LOG_LEVEL)
    r = redis_conn(config)

    def push(record: dict) -> None:
        r.rpush(args.record_key, json.dumps(record))
        r.expire(args.record_key, 3600)

    if args.engines == "stub":
        runtime.set_engines(stub_engines())

    real_bootstrap = gpu_worker.GpuWorker.bootstrap

    def bootstrap(self, *a, **kw):
        real_bootstrap(self, *a, **kw)
        engines = runtime.engines()
        push({"event": "ready", "seconds_from_start": time.time() - STARTED, "load_count": runtime.load_count,
              "load_seconds": runtime.load_seconds, "load_counts": dict(LOAD_COUNTS),
              "role_load_seconds": dict(getattr(engines, "load_seconds", {}) or {}),
              "engines": {role: getattr(engines.engine(role), "name", "?") for role in ("music", "writer", "cover")}})

    gpu_worker.GpuWorker.bootstrap = bootstrap

    real_run = generate.run

    def timed_run(generation_id: str) -> dict:
        entered = time.time()
        t0 = time.perf_counter()
        before = (runtime.load_count, runtime.load_seconds, dict(LOAD_COUNTS))
        result = None
        try:
            result = real_run(generation_id)
            return result
        finally:
            push({"event": "job", "id": generation_id, "entered": entered, "wall": time.perf_counter() - t0,
                  "result": result, "load_count_before": before[0], "load_count_after": runtime.load_count,
                  "load_counts_before": before[2], "load_counts_after": dict(LOAD_COUNTS),
                  "load_seconds": runtime.load_seconds})

    generate.run = timed_run  # RQ resolves "jobs.generate.run" by name at each job: this one runs

    worker = gpu_worker.build_worker(config, reconcile_interval=0, name=args.name)
    worker.work(burst=False, logging_level="WARNING", with_scheduler=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
