"""Figure 5: N variants in one engine call vs N sequential calls (same engine, same seeds).

The job renders a request's variants in ONE `music.render([...])` call. This measures that call
against N calls of one request each, side by side in one process: each repeat times both, in
alternating order, and the figure is the median of the per-repeat ratios (sequential seconds /
batched seconds; above 1 means batching is faster). It also reports whether the batched audio
equals the sequential audio (same seeds must give the same songs).

The tiny random-weight ACE-Step runs the real pipeline code on the CPU: its ratio shows how much
per-call overhead batching saves, not GPU parallelism (see bench/gpu.py for that).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from harness import Row, median, say, secs

TAGS = "synthwave, 118 bpm, A minor, female vocals"
LYRICS = "[verse]\nCity lights are fading out tonight\n[chorus]\nOh oh neon rain"


def requests_for(n: int, duration: float):
    from jobs.engines.base import MusicRequest
    from jobs.pipeline import guidance_for

    return [MusicRequest(tags=TAGS, lyrics=LYRICS, duration=duration, seed=1000 + i,
                         guidance=guidance_for(i)) for i in range(n)]


def compare(label: str, engine, n: int, duration: float, repeats: int) -> dict[str, Any]:
    reqs = requests_for(n, duration)
    engine.render(reqs)  # warm-up at both shapes: a first call's one-off costs are not batching's
    engine.render(reqs[:1])
    batched_s, seq_s, ratios = [], [], []
    max_diff = 0.0
    for rep in range(repeats):
        order = ("batch", "seq") if rep % 2 == 0 else ("seq", "batch")
        b = s = 0.0
        for which in order:
            t0 = time.perf_counter()
            if which == "batch":
                out_b = engine.render(reqs)
                b = time.perf_counter() - t0
            else:
                out_s = [engine.render([r])[0] for r in reqs]
                s = time.perf_counter() - t0
        batched_s.append(b)
        seq_s.append(s)
        ratios.append(s / b)
        for x, y in zip(out_b, out_s):
            if x.samples.shape != y.samples.shape:
                max_diff = float("inf")
            else:
                max_diff = max(max_diff, float(np.max(np.abs(x.samples - y.samples))) if x.samples.size else 0.0)
    return {"engine": label, "variants": n, "duration": duration, "repeats": repeats, "batched": median(batched_s),
            "sequential": median(seq_s), "ratio": median(ratios), "ratios": ratios, "max_abs_diff": max_diff}


def batching(tiny_settings, offline_settings, ns: list[int], durations: dict[str, float],
             repeats: int) -> tuple[list[Row], list[dict]]:
    from jobs.engines import load_engines

    engines = [("offline arranger", lambda: load_engines(offline_settings).music)]
    if tiny_settings is not None:
        import torch

        torch.set_num_threads(1)  # as in the tiny worker: too small to gain from 2, and 2 spin on a busy machine
        engines.append(("tiny ACE-Step (cpu)", lambda: load_engines(tiny_settings).music))
    rows, data = [], []
    for label, make in engines:
        engine = make()
        for n in ns:
            d = durations["tiny" if "tiny" in label else "offline"]
            say(f"figure 5: {label}, {n} variants of {d:g} s, {repeats} repeats")
            r = compare(label, engine, n, d, repeats)
            data.append(r)
            same = "same audio" if r["max_abs_diff"] == 0 else (
                "shapes differ" if r["max_abs_diff"] == float("inf") else f"max |diff| {r['max_abs_diff']:.2g}")
            rows.append(Row("5", f"{label}: {n} x {d:g} s, sequential / batched",
                            f"{r['ratio']:.2f}x ({secs(r['sequential'])} vs {secs(r['batched'])}; {same})"))
    return rows, data
