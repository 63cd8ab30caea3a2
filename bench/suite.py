"""Tunesmith's benchmark figures 1-6 (docs/benchmarks.md), printed as one table.

    bench/run                     all six figures (about 6 minutes on 2 cores)
    bench/run --quick             tiny sizes (under a minute): proves the scripts work; its figures mean nothing
    bench/run --only 1,2          some figures
    bench/run --json figures.json also write every number as JSON

`bench/run` installs what is missing (the project's virtualenv; `wrk` with apt where allowed)
and runs this file. Needs PostgreSQL (BENCH_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/postgres, trust auth) and Redis (BENCH_REDIS_URL, default
redis://127.0.0.1:6379/15) on loopback. It creates and drops its own database
(`tunesmith_bench_<pid>`), starts its own gunicorn, workers and S3 server (moto) on loopback
ports, and names every Redis key and queue after the run, so it can run beside the test suite.

1. web: req/s and p50/p99 of the feed, its search, the library and a status fragment, N songs in PostgreSQL
2. queue hand-off: create's commit -> the worker starts the job, worker idle (median, p95)
3. worker overhead: job wall - engine seconds (no-op, offline and tiny real engines)
4. model residency: engine loads per job on a long-lived worker
5. batching: N variants in one engine call vs N calls (offline and tiny real ACE-Step)
6. offline arranger: real-time factor of 30 s and 240 s songs on one core (bench/arranger.py)
8. idle GPU between jobs: a backlog on one worker, finishing inline vs overlapped (fig_jobs.py)
9. pages as the library grows (fig_growth.py): only with --only 9 (sizes from --growth-sizes,
   default 10000,100000,1000000; --quick: 2000,5000); p50/p99 of each page per size, their plans
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no model-loading progress bars between the figures
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from harness import (HERE, REDIS_URL, ROOT, BenchDatabase, Row, S3Server, Settings, loadavg, machine,  # noqa: E402
                     postgres_version, redis_version, require_loopback, rmtree, say, table)

FULL = dict(songs=10_000, web_seconds=15, web_warmup=20, handoff_jobs=200, offline_jobs=6, offline_duration=30,
            tiny_jobs=6, tiny_duration=10, variants=2, batch_ns=[2, 4], batch_durations={"offline": 30.0, "tiny": 10.0},
            batch_repeats=5, arranger=["--runs", "3", "--durations", "30", "240"], gap_jobs=12, gap_duration=30,
            growth_seconds=5, growth_warmup=20, growth_repeats=100, growth_budget=5.0)
QUICK = dict(songs=300, web_seconds=1, web_warmup=2, handoff_jobs=10, offline_jobs=2, offline_duration=2, tiny_jobs=2,
             tiny_duration=2, variants=2, batch_ns=[2], batch_durations={"offline": 2.0, "tiny": 2.0},
             batch_repeats=1, arranger=["--runs", "1", "--durations", "3", "--styles", "house, edm, 124 bpm"],
             gap_jobs=2, gap_duration=2, growth_seconds=1, growth_warmup=3, growth_repeats=10, growth_budget=1.0)


def arranger(args: list[str]) -> tuple[list[Row], list[dict]]:
    """Figure 6 through bench/arranger.py (its own process: it pins itself to one core)."""
    say("figure 6: offline arranger real-time factor on one core (bench/arranger.py " + " ".join(args) + ")")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, str(HERE / "arranger.py"), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError("bench/arranger.py failed:\n" + out.stdout[-2000:] + out.stderr[-2000:])
    pinned = re.search(r"(pinned to cpu \d+|not pinned[^\n]*)", out.stdout)
    rows, data = [], []
    for m in re.finditer(r"^\s*([\d.]+)s \|\s+([\d.]+) \|\s+(\d+)x \|\s+([\d.]+) \|\s+(\d+)x \|\s+(\d+)x\s*$",
                         out.stdout, re.M):
        d = {"duration": float(m.group(1)), "wall_median": float(m.group(2)), "rtf_wall": int(m.group(3)),
             "cpu_median": float(m.group(4)), "rtf_cpu": int(m.group(5)), "rtf_slowest_style_cpu": int(m.group(6))}
        data.append(d)
        rows.append(Row("6", f"arranger, {d['duration']:g} s song, one core ({pinned.group(1) if pinned else '?'})",
                        f"{d['rtf_wall']}x real time (wall {d['wall_median']:.2f} s; cpu {d['rtf_cpu']}x; "
                        f"slowest style {d['rtf_slowest_style_cpu']}x)"))
    if not data:
        raise RuntimeError("could not read bench/arranger.py's table:\n" + out.stdout[-2000:])
    return rows, data


def tiny_models(tmp: Path):
    try:
        import torch  # noqa: F401
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return None, f"tiny real models skipped: the gpu extra is not installed ({exc.name})"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tests.ml.tiny_models import build_all

    t0 = time.perf_counter()
    models = build_all(tmp / "models")
    say(f"  tiny random-weight models built in {time.perf_counter() - t0:.1f} s")
    return models, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the scripts, figures mean nothing")
    ap.add_argument("--only", default="1,2,3,4,5,6,8", help="comma-separated figure numbers")
    ap.add_argument("--json", type=Path, help="also write every figure as JSON here")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                    help="figure 1's load generator (auto: wrk when installed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) and say where")
    ap.add_argument("--growth-sizes", help="figure 9's library sizes, comma-separated (default "
                    "10000,100000,1000000; with --quick 2000,5000)")
    ap.add_argument("--growth-seconds", type=int, help="figure 9: seconds of load per page and size (default 5)")
    args = ap.parse_args(argv)
    only = {int(x) for x in args.only.split(",") if x.strip()}
    size = QUICK if args.quick else FULL
    started = time.perf_counter()
    require_loopback(REDIS_URL, "BENCH_REDIS_URL")

    from fig_web import pick_tool

    tool = pick_tool(args.loadgen)
    info = machine()
    info.update(postgres=postgres_version(), redis=redis_version(), loadgen=tool)
    print(f"Tunesmith benchmarks{' (--quick: sizes too small for the figures to mean anything)' if args.quick else ''}")
    print(f"machine: {info['nproc']} cpu ({info['cpu']}), {info['ram_gib']} GiB RAM, {info['os']}, "
          f"python {info['python']}, PostgreSQL {info['postgres']}, Redis {info['redis']}")
    print(f"load average at start: {' '.join(map(str, info['load']))}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="tunesmith-bench-"))
    rows: list[Row] = []
    data: dict = {"machine": info, "quick": args.quick, "sizes": size}
    failures: list[str] = []
    database = BenchDatabase()
    s3 = S3Server(tmp)
    try:
        database.create()
        s3.start()
        settings = Settings(database_url=database.url, storage_url=s3.url, var_dir=tmp / "var")
        info["storage"] = s3.kind

        data["load_average"] = {}

        def attempt(name: str, fn):
            before = loadavg()
            try:
                return fn()
            except Exception as exc:  # one figure failing still prints the others
                failures.append(f"{name}: {exc}")
                traceback.print_exc()
                rows.append(Row(name.split()[1] if name.startswith("figure") else name, name, "FAILED: " +
                                str(exc).splitlines()[0][:80], "", "MISSED"))
                return None
            finally:  # 1-minute load average before and after: the figure's noise
                after = loadavg()
                data["load_average"].setdefault(name, []).append([before[:1], after[:1]])
                say(f"  {name}: 1-min load average {before[0] if before else '?'} -> {after[0] if after else '?'}")

        if 1 in only:
            from fig_web import web

            got = attempt("figure 1", lambda: web(settings, tmp, size["songs"], size["web_seconds"], tool,
                                                     size["web_warmup"]))
            if got:
                rows.extend(got[0])
                data["web"] = got[1]
        stub = None
        if 2 in only or 3 in only:
            from fig_jobs import handoff

            got = attempt("figure 2", lambda: handoff(settings, tmp, size["handoff_jobs"]))
            if got:
                stub = got[1]
                if 2 in only:
                    rows.extend(got[0])
                data["handoff"] = got[1]
        tiny, why = (None, "")
        if 3 in only or 4 in only or 5 in only:
            tiny, why = tiny_models(tmp)
        if 3 in only or 4 in only:
            from fig_jobs import overhead, residency, run_jobs

            runs = []
            say(f"figures 3, 4: offline engines, {size['offline_jobs']} jobs of {size['variants']} x "
                f"{size['offline_duration']} s on one worker")
            got = attempt("figure 3", lambda: run_jobs(settings, tmp, "offline", size["offline_jobs"],
                                                       size["offline_duration"], size["variants"], ENGINE="offline"))
            if got:
                runs.append(got)
            if tiny is not None:
                say(f"figures 3, 4: tiny real models, {size['tiny_jobs']} jobs of {size['variants']} x "
                    f"{size['tiny_duration']} s on one worker")
                got = attempt("figure 3", lambda: run_jobs(settings, tmp, "tiny real", size["tiny_jobs"],
                                                           size["tiny_duration"], size["variants"],
                                                           OMP_NUM_THREADS=1, **tiny.values()))
                if got:
                    runs.append(got)
            data["overhead"], data["residency"] = [], []
            if 3 in only:
                if stub:
                    rows.append(Row("3", f"no-op engines (figure 2's {stub['jobs']} jobs): the whole job",
                                    f"{stub['stub_job_wall_median'] * 1000:.1f} ms median, "
                                    f"p95 {stub['stub_job_wall_p95'] * 1000:.1f} ms"))
                for run in runs:
                    r, d = overhead(run)
                    rows.extend(r)
                    data["overhead"].append(d)
            if 4 in only:
                for run in runs:
                    r, d = residency(run)
                    rows.extend(r)
                    data["residency"].append(d)
            if why:
                rows.append(Row("3/4", why, "skipped"))
        if 5 in only:
            from fig_batching import batching

            got = attempt("figure 5", lambda: batching(tiny.settings() if tiny else None,
                                                       settings.config(ENGINE="offline"), size["batch_ns"],
                                                       size["batch_durations"], size["batch_repeats"]))
            if got:
                rows.extend(got[0])
                data["batching"] = got[1]
            if why:
                rows.append(Row("5", why, "skipped"))
        if 6 in only:
            got = attempt("figure 6", lambda: arranger(size["arranger"]))
            if got:
                rows.extend(got[0])
                data["arranger"] = got[1]
        if 8 in only:
            from fig_jobs import idle_gap

            got = attempt("figure 8", lambda: idle_gap(settings, tmp, size["gap_jobs"], size["gap_duration"],
                                                       size["variants"]))
            if got:
                rows.extend(got[0])
                data["idle_gap"] = got[1]
        if 9 in only:
            from fig_growth import DEFAULT_SIZES, QUICK_SIZES, growth

            sizes = ([int(x) for x in args.growth_sizes.split(",") if x.strip()] if args.growth_sizes
                     else (QUICK_SIZES if args.quick else DEFAULT_SIZES))
            got = attempt("figure 9", lambda: growth(settings, tmp, sizes, args.growth_seconds or size["growth_seconds"],
                                                     tool, size["growth_warmup"], size["growth_repeats"],
                                                     size["growth_budget"]))
            if got:
                rows.extend(got[0])
                data["growth"] = got[1]
    finally:
        s3.stop()
        database.drop()
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            rmtree(tmp)

    elapsed = time.perf_counter() - started
    info["load_end"] = loadavg()
    data["seconds"] = round(elapsed, 1)
    data["rows"] = [r.__dict__ for r in rows]
    print()
    print(table(rows))
    print()
    if data.get("growth"):
        print("figure 9: p50 / p99 per page as the library grows, 2 connections")
        print(data["growth"]["table"])
        print()
    print(f"figure 1 load generator: {tool}; storage: {info.get('storage', '?')}; "
          f"load average at end: {' '.join(map(str, info['load_end']))}")
    print(f"bench/run took {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    if failures:
        print("failed: " + "; ".join(f.splitlines()[0] for f in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
