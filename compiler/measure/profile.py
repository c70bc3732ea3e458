"""Where a built library's time goes: wall time of every kernel call, through the Relax VM's instrument
hook (TVM 0.27 has no VM profiler), summed per kernel over a few runs (``squeezeedge profile``).

Kernels that differ only in their baked-in constants (int8 layers each requantize with their own
scales, so TVM numbers their epilogue ops apart) are summed under one name.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

_CONSTANT_OPS = {"quantize", "dequantize", "multiply", "subtract", "add", "cast", "divide"}


def kernel_group(name: str) -> str:
    """``fused_conv1d2_subtract4_cast7_quantize13`` -> ``fused_conv1d2_subtract_cast_quantize``."""
    parts = []
    for seg in name.split("_"):
        m = re.fullmatch(r"([a-z]+)(\d+)", seg)
        parts.append(m.group(1) if m and m.group(1) in _CONSTANT_OPS else seg)
    return "_".join(parts)


def random_feed(model, seed: int, seq_len: int | None = None) -> dict:
    """Seeded random token ids (and mask, types) at a loaded library's input shape (``seq_len`` tokens
    instead, for a library that takes any length), for the inputs it takes."""
    from squeezeedge.runtime import random_inputs

    batch, seq = next(i["shape"] for i in model.inputs if i["name"] == "input_ids")
    seq = seq_len or seq
    feed = random_inputs(model.vocab_size, model.type_vocab_size or 2, batch, seq, seed)
    return {k: v for k, v in feed.items() if k in {i["name"] for i in model.inputs}}


def profile(lib_dir: Path, runs: int = 3, seed: int = 0, threads: int | None = None, seq_len: int | None = None) -> dict:
    """Run the library ``runs`` times on a random input after one warm-up; per kernel group the calls
    per inference and milliseconds per inference, largest first, with the wall time per inference
    without the hook (``wall_ms``) and under it (``profiled_wall_ms``, what the shares are of).

    The hook calls back into Python twice per VM instruction (~5 us here), so the ``vm.builtin.*``
    rows (allocations, null values) are mostly the hook's own cost, and each kernel's time carries a
    little of it: on int8 SqueezeBERT ~450 instructions add several ms."""
    from squeezeedge import runtime

    model = runtime.load(lib_dir, threads=threads)
    feed = random_feed(model, seed, seq_len)
    model(**feed)  # a length the library does not take fails here, with the runtime's one-line error

    def seconds_per_run() -> float:
        t0 = time.perf_counter()
        for _ in range(runs):
            model(**feed)
        return (time.perf_counter() - t0) / runs

    bare = seconds_per_run()
    total, calls, start = Counter(), Counter(), {}

    def instrument(func, symbol, before, ret, *args):
        if before:
            start[symbol] = time.perf_counter()
        else:
            group = kernel_group(symbol)
            total[group] += time.perf_counter() - start.pop(symbol)
            calls[group] += 1
        return 0

    model._vm.set_instrument(instrument)
    wall = seconds_per_run()
    rows = [{"kernel": k, "calls": calls[k] // runs, "ms": round(v / runs * 1e3, 3),
             "share": round(v / runs / wall, 4)} for k, v in total.most_common()]
    return {"library": str(lib_dir), "runs": runs, "seq_len": feed["input_ids"].shape[1], "wall_ms": round(bare * 1e3, 2),
            "profiled_wall_ms": round(wall * 1e3, 2), "thread_pool": model.pool, "kernels": rows}
