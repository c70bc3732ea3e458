"""Timing runtimes side by side: interleaved rounds, statistics, the VALID/INVALID verdict.

Method: every runtime gets the same input (seeded random tokens at the library's shape) and the same
thread count; after ``warmup`` rounds, each round runs every runtime once, in a shuffled order (seeded),
so machine noise (another process, frequency changes) hits all of them alike and no runtime always
follows the same one (with a rotating start, the TVM library that always came right after TFLite paid
for waking its thread pool where the next TVM library did not, and a shipped database looked slower
than none where alone they ran alike; results/PERFORMANCE-LOG.md).
Samples are wall-clock milliseconds of one call.
"""

from __future__ import annotations

import os
import random
import time

from squeezeedge import console
from squeezeedge.measure.baselines import Runner  # noqa: F401  (the type of what is timed)

MIN_RUNS, MIN_WINDOW_S, MAX_P90_OVER_MEDIAN = 10, 1.0, 0.25  # the VALID/INVALID rules (README "bench")
MAX_ROUNDS = 100_000


def stats(samples: list[float]) -> dict:
    import numpy as np

    a = np.asarray(samples)
    return {"n": int(a.size), "median_ms": float(np.median(a)), "mean_ms": float(a.mean()),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min_ms": float(a.min()),
            "total_s": float(a.sum() / 1e3)}



def verdict(st: dict, window_s: float) -> tuple[str, list[str]]:
    """VALID unless there were too few runs, too short a timed window, or too much spread."""
    reasons = []
    if st["n"] < MIN_RUNS:
        reasons.append(f"too few runs: {st['n']} < {MIN_RUNS}")
    if window_s < MIN_WINDOW_S:
        reasons.append(f"too short: the timed rounds took {window_s:.2f} s < {MIN_WINDOW_S} s (raise --min-seconds)")
    spread = st["p90_ms"] / st["median_ms"] - 1 if st["median_ms"] > 0 else 0.0
    if spread > MAX_P90_OVER_MEDIAN:
        reasons.append(f"noisy: p90 is {spread:.0%} above the median (> {MAX_P90_OVER_MEDIAN:.0%})")
    return ("INVALID" if reasons else "VALID"), reasons



def interleave(runners: list["Runner"], feeds: dict | list[dict], cfg) -> tuple[dict[str, list[float]], float]:
    """Interleaved rounds; (samples per runtime, seconds the timed rounds took). With several feeds (the
    real-text workload), round i runs feed i mod len(feeds) and timing stops only after whole passes, so
    every feed counts alike."""
    feeds = [feeds] if isinstance(feeds, dict) else feeds
    samples: dict[str, list[float]] = {r.name: [] for r in runners}
    # libraries built just before (make bench-latency) are still dirty in the page cache: the kernel
    # writes them back ~30 s later, in the middle of the timed rounds (every runtime 10-30% slower for
    # a few seconds, p90 over the 25% limit). Write them now.
    os.sync()
    for w in range(cfg.warmup):
        for r in runners:
            r.fn(feeds[w % len(feeds)])
    start = last_report = time.monotonic()
    rnd, order = 0, random.Random(0)
    while True:
        whole = rnd % len(feeds) == 0
        if cfg.repeat is not None and rnd >= max(cfg.repeat, len(feeds) if len(feeds) > 1 else 0) and whole:
            break
        if cfg.repeat is None and rnd >= MIN_RUNS and time.monotonic() - start >= cfg.min_seconds and whole:
            break
        if rnd >= MAX_ROUNDS and whole:
            break
        feed = feeds[rnd % len(feeds)]
        for r in order.sample(runners, len(runners)):
            if r.timer is not None:
                samples[r.name].append(r.timer())
                continue
            t0 = time.perf_counter()
            r.fn(feed)
            samples[r.name].append((time.perf_counter() - t0) * 1e3)
        rnd += 1
        if time.monotonic() - last_report > 10.0:
            last_report = time.monotonic()
            import numpy as np

            console.info(f"  round {rnd}: " + ", ".join(f"{n} {np.median(v):.2f} ms" for n, v in samples.items()))
    return samples, time.monotonic() - start
