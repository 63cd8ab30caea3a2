"""A small closed-loop HTTP load generator, for machines without `wrk`.

    python bench/loadgen.py URL --connections 2 --duration 10 [--header "Name: value"]...

Run as its own process (never inside the server's): each connection is a thread with one
keep-alive HTTP/1.1 connection that sends the next request as soon as the last one is answered.
Prints one JSON object: requests, errors (non-2xx/3xx or socket errors), requests/s and the
p50 / p90 / p99 / max latency in seconds. Only loopback URLs are accepted.
"""
from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlparse


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--header", action="append", default=[])
    args = ap.parse_args(argv)
    url = urlparse(args.url)
    if url.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("loadgen only talks to loopback")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = {"Connection": "keep-alive"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()

    latencies: list[list[float]] = [[] for _ in range(args.connections)]
    errors = [0] * args.connections
    start = threading.Event()
    deadline = [0.0]

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
        start.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline[0]:
                break
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 400:
                    errors[i] += 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
                continue
            latencies[i].append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(args.connections)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline[0] = began + args.duration
    start.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    xs = [x for per in latencies for x in per]
    print(json.dumps({"tool": "python", "requests": len(xs), "errors": sum(errors), "seconds": elapsed,
                      "rps": len(xs) / elapsed, "p50": percentile(xs, 50), "p90": percentile(xs, 90),
                      "p99": percentile(xs, 99), "max": max(xs) if xs else float("nan")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
