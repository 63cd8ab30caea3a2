"""Reliability figures (docs/reliability.md): the fault trials with a larger N, the load run and
the security checks, printed as Markdown tables.

    .venv/bin/python bench/reliability.py                          N=20 trials, 60 s of load, 200 examples
    .venv/bin/python bench/reliability.py --trials 5 --load-seconds 20 --only faults,load
    .venv/bin/python bench/reliability.py --json reliability.json  also write every number

It runs the tests of tests/reliability (the same code as `pytest tests/reliability`, which uses
N=3 and 10 s) with RELIABILITY_TRIALS / RELIABILITY_LOAD_SECONDS / RELIABILITY_EXAMPLES set, and
collects what each test records. Needs what the test suite needs: PostgreSQL and Redis on
loopback (TEST_POSTGRES_URL, TEST_REDIS_URL), redis-server on PATH for the Redis trial. Exits
non-zero when any trial lost something or any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {
    "faults": ["tests/reliability/test_faults.py"],
    "load": ["tests/reliability/test_load.py"],
    "security": ["tests/reliability/test_hostile_input.py", "tests/reliability/test_xss.py",
                 "tests/reliability/test_access.py", "tests/reliability/test_csrf.py",
                 "tests/reliability/test_limits.py"],
}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="repetitions of each fault (default 20)")
    parser.add_argument("--load-seconds", type=float, default=60, help="length of the load run (default 60)")
    parser.add_argument("--users", type=int, default=50, help="concurrent people in the load run (default 50)")
    parser.add_argument("--examples", type=int, default=200, help="hypothesis examples per property (default 200)")
    parser.add_argument("--only", default="faults,load,security", help="comma list of: faults, load, security")
    parser.add_argument("--seed", help="RELIABILITY_SEED: repeat the same kill points and outage lengths")
    parser.add_argument("--json", help="write every recorded number to this file")
    args = parser.parse_args(argv)

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    files = [f for g in groups for f in GROUPS[g]]
    report = Path(tempfile.mkstemp(prefix="reliability-", suffix=".jsonl")[1])
    env = dict(os.environ, RELIABILITY_TRIALS=str(args.trials), RELIABILITY_LOAD_SECONDS=str(args.load_seconds),
               RELIABILITY_LOAD_USERS=str(args.users), RELIABILITY_EXAMPLES=str(args.examples),
               RELIABILITY_REPORT=str(report))
    if args.seed:
        env["RELIABILITY_SEED"] = args.seed
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:logging", "-p", "no:cacheprovider",
           "--timeout", "1800"]
    log = report.with_suffix(".log")
    print(f"running {len(files)} test file(s) with N={args.trials}, {args.load_seconds:g} s of load, "
          f"{args.examples} examples; pytest output in {log}", file=sys.stderr)
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log, "wb") as fh:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]

    out = []
    given = list(argv if argv is not None else sys.argv[1:])
    if "--json" in given:  # where a copy of the numbers goes is not part of what made them
        i = given.index("--json")
        del given[i:i + 2]
    given = [a for a in given if not a.startswith("--json=")]
    command = "python bench/reliability.py " + " ".join(shlex.quote(a) for a in given)
    out.append(f"`{command.strip()}` — {tail[0]}; {wall:.0f} s wall, {cpu:.0f} s CPU (all processes), "
               f"{os.cpu_count()} cores, 1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} "
               f"after (other work shares the machine), Python {platform.python_version()}")
    faults = [r for r in rows if r["kind"] == "fault"]
    if faults:
        out += ["", "| fault | trials | lost | outcome |", "| --- | --- | --- | --- |"]
        for r in faults:
            out.append(f"| {r['fault']} | {r['trials']} | {r['lost']} lost | {r['outcome']} ({r['seconds']:.0f} s) |")
    for r in (r for r in rows if r["kind"] == "load"):
        lat = r["latency"]
        out += ["", f"Load: {r['users']} people for {r['seconds']:.0f} s against gunicorn (2 workers x 4 threads) "
                    f"on loopback, PostgreSQL, one GPU worker (offline engines) making songs meanwhile: "
                    f"**{r['requests']} requests, {r['rps']} req/s, {r['five_xx']} 5xx, {r['errors']} connection "
                    f"errors**; {r['submits']} submits accepted (each one generation, none lost or doubled), "
                    f"{r['songs_processed']} songs made; web CPU {r.get('web_cpu_seconds')} s.",
                "", "| request | n | p50 | p95 | p99 |", "| --- | --- | --- | --- | --- |"]
        for kind, v in lat.items():
            out.append(f"| {kind} | {v['n']} | {ms(v['p50'])} | {ms(v['p95'])} | {ms(v['p99'])} |")
    security = [r for r in rows if r["kind"] == "security"]
    if security:
        out += ["", "| check | outcome |", "| --- | --- |"]
        for r in security:
            out.append(f"| {r['check']} | {r['outcome']} |")
    print("\n".join(out))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "rc": rc, "wall_s": round(wall, 1),
                                               "cpu_s": round(cpu, 1), "rows": rows}, indent=2))
    lost = sum(r.get("lost", 0) for r in faults)
    if rc != 0 or lost:
        print(f"\nFAILED: pytest exit {rc}, {lost} lost; see {log}", file=sys.stderr)
        return rc or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
