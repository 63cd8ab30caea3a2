"""A small closed-loop HTTP load generator, for machines without `wrk`.

    python bench/loadgen.py URL --connections 2 --duration 10 [--header "Name: value"]...
    python bench/loadgen.py BASE_URL --mix mix.json --connections 50 --duration 30

With `--mix`, each connection draws its next request from a weighted list (a JSON array of
{"name", "path", "headers", "weight"}; seeded per connection), so pages load side by side like a
crowd's clicks; the output adds each name's count, errors and p50 / p99, and the 5xx count.
`--think 0.5,1.5` makes each connection a person who waits a random 0.5-1.5 s after each answer.

Run as its own process (never inside the server's): each connection is a thread with one
keep-alive HTTP/1.1 connection that sends the next request as soon as the last one is answered.
Prints one JSON object: requests, errors (non-2xx/3xx or socket errors), requests/s and the
p50 / p90 / p99 / max latency in seconds. Only loopback URLs are accepted.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
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
    ap.add_argument("--mix", help="a JSON file of weighted requests (paths relative to the URL's host)")
    ap.add_argument("--think", default="", help="LOW,HIGH: each connection waits a random LOW..HIGH seconds after "
                                                "an answer (a person between clicks); default none (closed loop)")
    args = ap.parse_args(argv)
    think = [float(x) for x in args.think.split(",")] if args.think else None
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
    mix = [{"name": path, "path": path, "headers": {}, "weight": 1.0}]
    if args.mix:
        with open(args.mix) as fh:
            mix = json.load(fh)
    names = [m["name"] for m in mix]
    weights = [float(m.get("weight", 1.0)) for m in mix]
    sent = [dict(headers, **m.get("headers", {})) for m in mix]

    latencies: list[list[float]] = [[] for _ in range(args.connections)]
    by_name: list[dict[str, list[float]]] = [{n: [] for n in names} for _ in range(args.connections)]
    failed: list[dict[str, int]] = [{n: 0 for n in names} for _ in range(args.connections)]
    server_errors = [0] * args.connections
    errors = [0] * args.connections
    start = threading.Event()
    deadline = [0.0]

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
        draw = random.Random(i)
        start.wait()
        if think:  # people arrive spread over one pause, not all in the same millisecond
            time.sleep(draw.uniform(0, think[-1]))
        while True:
            k = draw.choices(range(len(mix)), weights)[0] if len(mix) > 1 else 0
            t0 = time.perf_counter()
            if t0 >= deadline[0]:
                break
            try:
                conn.request("GET", mix[k]["path"], headers=sent[k])
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 400:
                    errors[i] += 1
                    failed[i][names[k]] += 1
                if resp.status >= 500:
                    server_errors[i] += 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                failed[i][names[k]] += 1
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
                continue
            took = time.perf_counter() - t0
            latencies[i].append(took)
            by_name[i][names[k]].append(took)
            if think:
                time.sleep(draw.uniform(think[0], think[-1]))
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
    out = {"tool": "python", "requests": len(xs), "errors": sum(errors), "server_errors": sum(server_errors),
           "seconds": elapsed, "rps": len(xs) / elapsed, "p50": percentile(xs, 50), "p90": percentile(xs, 90),
           "p99": percentile(xs, 99), "max": max(xs) if xs else float("nan")}
    if args.mix:
        out["pages"] = {}
        for n in names:
            ys = [x for per in by_name for x in per[n]]
            out["pages"][n] = {"requests": len(ys), "errors": sum(f[n] for f in failed),
                               "p50": percentile(ys, 50), "p99": percentile(ys, 99)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
