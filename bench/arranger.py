"""Real-time factor of the offline arranger on one CPU core.

Renders songs of several lengths and styles with `OfflineMusic` and prints, per length, the
median wall time over N runs and the real-time factor (seconds of audio per second of work).
Thread pools are pinned to one thread before numpy is imported, so the figure is per core.

    python bench/arranger.py                 # 30 s and 240 s, 5 runs each
    python bench/arranger.py --runs 9 --durations 30 120 240 --styles "synthwave, 120 bpm"
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from jobs.engines.base import MusicRequest  # noqa: E402
from jobs.engines.offline_music import OfflineMusic  # noqa: E402

LYRICS = (
    "[verse]\nCity lights are fading out tonight\nI can hear you calling out my name\n"
    "Every step I take is closer now\nRunning through the neon rain\n\n"
    "[chorus]\nOh oh neon rain\nWashing all the pain away\nHold me till the morning light\n"
    "We will never be the same\n\n"
    "[verse]\nSilver rivers on the window pane\nEvery word I never said\n"
    "Echoes in the empty train\nDancing circles in my head\n\n"
    "[chorus]\nOh oh neon rain\nWashing all the pain away\n\n"
    "[bridge]\nAnd if the night should fade away\nI'll be dancing another day\n\n"
    "[chorus]\nOh oh neon rain\nWashing all the pain away"
)
DEFAULT_STYLES = [
    "synthwave, 118 bpm, A minor, female vocals",
    "lofi hip hop, chill, rhodes",
    "rock, energetic, electric guitar",
    "ambient, calm, pads",
    "house, edm, 124 bpm",
    "cinematic, epic, strings",
]


def pin_affinity() -> str:
    """Run on one core where the OS allows it (Linux); say what happened."""
    if hasattr(os, "sched_setaffinity"):
        try:
            cpu = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})
            return f"pinned to cpu {cpu}"
        except OSError:
            pass
    return "not pinned (thread pools limited to 1)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per length and style (median reported)")
    ap.add_argument("--durations", type=float, nargs="+", default=[30.0, 240.0])
    ap.add_argument("--styles", nargs="+", default=DEFAULT_STYLES, help="tag lines to render")
    ap.add_argument("--instrumental", action="store_true", help="no vocals")
    args = ap.parse_args(argv)

    where = pin_affinity()
    engine = OfflineMusic()
    # Warm-up: builds the wavetables once, as a long-lived worker would have.
    engine.render([MusicRequest(tags=s, lyrics=LYRICS, duration=4.0, seed=0) for s in args.styles])

    print(f"offline arranger real-time factor — python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, {where}")
    print(f"{args.runs} runs per style, {len(args.styles)} styles, "
          f"{'instrumental' if args.instrumental else 'with vocals'}\n")
    header = (f"{'song length':>11} | {'wall median s':>13} | {'x real time':>11} | {'cpu median s':>12} | "
              f"{'x real time (cpu)':>17} | {'slowest style (cpu)':>19}")
    print(header)
    print("-" * len(header))
    per_style: dict[str, float] = {}
    duration = 0.0
    for duration in args.durations:
        wall: list[float] = []
        cpu: list[float] = []
        per_style = {}
        for style in args.styles:
            st: list[float] = []
            for run in range(args.runs):
                req = MusicRequest(tags=style, lyrics="" if args.instrumental else LYRICS, duration=duration,
                                   seed=1000 + run, instrumental=args.instrumental)
                w0, c0 = time.perf_counter(), time.process_time()
                out = engine.render([req])[0]
                wall.append(time.perf_counter() - w0)
                st.append(time.process_time() - c0)
                assert out.samples.shape[0] == round(duration * engine.sample_rate)
            per_style[style] = statistics.median(st)
            cpu += st
        w, c = statistics.median(wall), statistics.median(cpu)
        print(f"{duration:>10.0f}s | {w:>13.3f} | {duration / w:>10.0f}x | {c:>12.3f} | {duration / c:>16.0f}x | "
              f"{duration / max(per_style.values()):>18.0f}x")
    print(f"\nper style, {duration:.0f} s songs (median cpu time):")
    for style, t in per_style.items():
        print(f"  {duration / t:>6.0f}x  {style}")
    print("\nwall time equals cpu time on an idle core; on a shared machine the cpu figure is the fair one.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
