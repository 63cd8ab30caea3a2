"""`python -m tests.reliability.worker [gpu_worker options]`: the real GPU worker (`gpu_worker.main`)
with test knobs read from the environment, so a trial can make jobs slow enough to be killed in
the middle, or shorten the waits that production keeps long:

    RELIABILITY_SLOW_SECONDS    the music engine takes at least this long (progress every 50 ms)
    RELIABILITY_SLOW_DURATIONS  only for songs of these durations (comma list; empty: all songs)
    RELIABILITY_RECONCILE_GRACE the reconciler's grace in seconds (production: 30)
    RELIABILITY_HEARTBEAT_SLACK seconds RQ keeps a busy worker's key past its job timeout (RQ: 60)
    RELIABILITY_DIE_AT_START    1: the process SIGKILLs itself as a job starts (after RQ marked the
                                job started, before the job touched the database)
    RELIABILITY_NICE            run at this niceness (the load test keeps the web's CPU first)

Everything else is the product: the same worker class, job, reconciler, heartbeat and engines.
"""
from __future__ import annotations

import os
import signal
import sys
import time


def _float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else None


class SlowMusic:
    """The real offline music engine, after a wait that reports progress like denoising steps."""

    def __init__(self, inner, seconds: float, durations: set[float]):
        self.inner, self.seconds, self.durations = inner, seconds, durations
        self.name, self.offline = inner.name, getattr(inner, "offline", True)
        self.sample_rate = getattr(inner, "sample_rate", None)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def render(self, requests, progress=None):
        if not self.durations or any(float(r.duration) in self.durations for r in requests):
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < self.seconds:
                if progress is not None:
                    progress(min(0.99, elapsed / self.seconds))
                time.sleep(0.05)
        return self.inner.render(requests, progress=progress)


def install() -> None:
    import faulthandler

    import jobs.engines as engines_pkg

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test that times out asks for the stacks

    if os.environ.get("RELIABILITY_NICE"):
        os.nice(int(os.environ["RELIABILITY_NICE"]))

    slow = _float("RELIABILITY_SLOW_SECONDS")
    if slow:
        durations = {float(d) for d in os.environ.get("RELIABILITY_SLOW_DURATIONS", "").split(",") if d.strip()}
        load = engines_pkg.load_engines

        def load_engines(config):
            engines = load(config)
            engines.music = SlowMusic(engines.music, slow, durations)
            return engines

        engines_pkg.load_engines = load_engines

    grace = _float("RELIABILITY_RECONCILE_GRACE")
    if grace is not None:
        import core.reconcile

        core.reconcile.reconcile.__defaults__ = (grace,)

    slack = _float("RELIABILITY_HEARTBEAT_SLACK")
    if slack is not None:
        import gpu_worker

        def get_heartbeat_ttl(self, job):
            return int((job.timeout if job.timeout and job.timeout > 0 else 420) + slack)

        gpu_worker.GpuWorker.get_heartbeat_ttl = get_heartbeat_ttl

    if os.environ.get("RELIABILITY_DIE_AT_START") == "1":
        import jobs.generate

        def run(generation_id):
            os.kill(os.getpid(), signal.SIGKILL)

        jobs.generate.run = run


def main(argv=None) -> int:
    install()
    import gpu_worker

    return gpu_worker.main(argv)


if __name__ == "__main__":
    sys.exit(main())
