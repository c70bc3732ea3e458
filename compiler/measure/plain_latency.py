"""A library's latency as a user gets it: loaded in a fresh, plain Python process with
``squeezeedge.runtime.load`` and nothing set (no TVM_* variables), next to `squeezeedge bench`'s figure
for the same library. `make bench-latency` writes results/plain-process-TARGET.{json,md}.

    python -m squeezeedge.measure.plain_latency LIB_DIR... --bench results/bench-TARGET.json --out results/plain-process-TARGET
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

# Runs in the fresh process: load, three warm-up calls, then calls until `seconds` have passed.
PROBE = """
import json, sys, time
import numpy as np
import squeezeedge.runtime as rt
from squeezeedge.measure.profile import random_feed
lib, seconds = sys.argv[1], float(sys.argv[2])
model = rt.load(lib)
feed = random_feed(model, 1)  # bench's input seed
for _ in range(3):
    model(**feed)
samples, start = [], time.monotonic()
while time.monotonic() - start < seconds or len(samples) < 10:
    t0 = time.perf_counter()
    model(**feed)
    samples.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"median_ms": float(np.median(samples)), "p90_ms": float(np.percentile(samples, 90)),
                  "n": len(samples), "thread_pool": model.pool}))
"""


def plain_process(lib: Path, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TVM_", "OMP_"))}
    res = subprocess.run([sys.executable, "-c", PROBE, str(lib), str(seconds)], capture_output=True, text=True,
                         env=env, timeout=600)
    if res.returncode != 0:
        raise click.ClickException(f"{lib}: {(res.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@click.command()
@click.argument("libs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--bench", "bench_json", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Timed calls per library.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Writes OUT.json and OUT.md.")
def main(libs, bench_json, seconds, out):
    bench = json.loads(bench_json.read_text())
    by_lib = {Path(r["info"]["library"]).resolve(): r for r in bench["runtimes"]
              if r["status"] == "ok" and r["family"] == "squeezeedge"}
    rows = []
    for lib in libs:
        click.echo(f"  {lib}: {seconds:.0f} s alone in a plain process ...", err=True)
        got = plain_process(lib, seconds)
        row = by_lib.get(lib.resolve())
        bench_ms = row["stats"]["median_ms"] if row else None
        rows.append({"library": str(lib), "plain_median_ms": round(got["median_ms"], 3),
                     "plain_p90_ms": round(got["p90_ms"], 3), "runs": got["n"], "thread_pool": got["thread_pool"],
                     "bench_median_ms": bench_ms,
                     "plain_over_bench": round(got["median_ms"] / bench_ms, 3) if bench_ms else None})
    payload = {"bench": str(bench_json), "bench_created": bench["created"], "machine": bench.get("machine"),
               "method": f"each library alone in a fresh Python process, squeezeedge.runtime.load defaults, no TVM_* "
                         f"or OMP_* variables, 3 warm-up calls then {seconds:.0f} s of calls", "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    cpu = (bench.get("machine") or {}).get("cpu", "?")
    lines = [f"# A library in a plain process vs `squeezeedge bench` ({cpu})", "",
             f"{payload['method']}; bench: `{bench_json}` ({bench['created']}).", "",
             "| library | plain process median ms | bench median ms | plain / bench | threads |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['plain_over_bench']:.2f}x" if r["plain_over_bench"] else "-"
        bench_ms = f"{r['bench_median_ms']:.2f}" if r["bench_median_ms"] else "-"
        lines.append(f"| `{r['library']}` | {r['plain_median_ms']:.2f} | {bench_ms} | {ratio} | "
                     f"{r['thread_pool']['threads']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines[4:]))


if __name__ == "__main__":
    main()
