"""bench/run cannot rot: its --quick run (tiny sizes) goes through all six figures and prints the
table. The numbers of a quick run mean nothing; only that each figure was measured is checked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def test_bench_run_quick_measures_every_figure(tmp_path):
    out_json = tmp_path / "figures.json"
    env = dict(os.environ, BENCH_POSTGRES_URL=PG_ADMIN_URL, BENCH_REDIS_URL=REDIS_URL, TUNESMITH_NO_APT="1")
    proc = subprocess.run([str(ROOT / "bench" / "run"), "--quick", "--json", str(out_json)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "bench/run took" in out and "FAILED" not in out
    for figure in ("1", "2", "3", "4", "5", "6", "8"):
        assert any(line.startswith(f"{figure} ") for line in out.splitlines()), f"figure {figure} missing:\n{out}"

    figures = json.loads(out_json.read_text())
    assert figures["quick"] is True
    web = figures["web"]
    assert {r["page"] for r in web["runs"]} == {"feed", "search", "library", "status fragment"}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in web["runs"])
    handoff = figures["handoff"]
    assert handoff["processed"] == handoff["jobs"] and 0 < handoff["median"] < 5
    assert {o["label"] for o in figures["overhead"]} >= {"offline"}
    assert all(0 <= o["overhead"] < o["wall"] for o in figures["overhead"])
    assert all(r["loads_during_jobs"] == 0 and r["load_count_at_ready"] == 1 for r in figures["residency"])
    assert figures["batching"] and all(b["ratio"] > 0 for b in figures["batching"])
    assert [a["duration"] for a in figures["arranger"]] == [3.0]
    gap = figures["idle_gap"]
    assert all(gap[k]["processed"] == gap[k]["songs"] for k in ("inline", "overlap"))


WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8000/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.81ms    2.10ms  41.20ms   88.00%
    Req/Sec   204.11     20.33   250.00     70.00%
  Latency Distribution
     50%    9.50ms
     75%   10.40ms
     90%   12.01ms
     99%  850.00us
  2041 requests in 10.00s, 20.41MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    204.05
Transfer/sec:      2.04MB
"""


def test_wrk_output_is_read_with_units_and_errors():
    sys.path.insert(0, str(ROOT / "bench"))
    from fig_web import parse_wrk

    r = parse_wrk(WRK_OUTPUT)
    assert r["requests"] == 2041 and r["rps"] == 204.05 and r["errors"] == 3
    assert abs(r["p50"] - 0.0095) < 1e-9 and abs(r["p99"] - 0.00085) < 1e-9 and r["seconds"] == 10.0
