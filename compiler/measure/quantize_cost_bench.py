"""Benchmark: what calibration costs on full-size SqueezeBERT (128 texts, seq 128), per method.

Each method runs `squeezeedge quantize` in a fresh process; wall time and that process's peak RSS
(os.wait4) are recorded against the issue's bound (2 minutes, 6 GiB). Writes results/quantize-cost.{json,md}.

    python -m squeezeedge.measure.quantize_cost_bench [--workdir build/bench] [--results results]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from squeezeedge.artifact import tool_versions
from squeezeedge.stages.export import ExportConfig, export_model
from squeezeedge.measure.fidelity_bench import _cpu
from squeezeedge.stages.quantize import METHODS

BOUND_S, BOUND_MB = 120, 6 * 1024


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def main(workdir: Path, results: Path):
    exp = export_model(ExportConfig(model="squeezebert-uncased", seq_len=128), workdir / "squeezebert-export")
    rows = []
    for method in METHODS:
        cmd = [sys.executable, "-m", "squeezeedge", "-q", "--json", "quantize", str(exp.artifact.path), "--method",
               method, "--num-samples", "128", "--out", str(workdir / f"squeezebert-int8-{method}"), "--force"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"quantize --method {method} failed")
        fid = json.loads(out)["manifest"]["results"]["fidelity"]
        rss_mb = usage.ru_maxrss / 1024
        rows.append({"method": method, "wall_s": round(wall, 1), "peak_rss_mb": round(rss_mb),
                     "within_bound": wall < BOUND_S and rss_mb < BOUND_MB, "mean_cosine": fid["mean_cosine"]})
        click.echo(f"{method}: {wall:.1f} s, {rss_mb:.0f} MB peak RSS", err=True)
    rep = {"schema_version": 1, "benchmark": "quantize cost, full-size SqueezeBERT, 128 texts at seq 128",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": _cpu(), "cores": os.cpu_count(),
           "bound": {"wall_s": BOUND_S, "peak_rss_mb": BOUND_MB}, "versions": tool_versions(), "rows": rows}
    results.mkdir(parents=True, exist_ok=True)
    (results / "quantize-cost.json").write_text(json.dumps(rep, indent=2) + "\n")
    md = [f"# {rep['benchmark']}", "",
          f"Measured {rep['created']} on {rep['cpu']} ({rep['cores']} cores), onnxruntime "
          f"{rep['versions']['onnxruntime']}. Each method is one `squeezeedge quantize` process (tokenize, "
          "calibrate, quantize, held-out fidelity on 64 texts); wall time and peak RSS of that process. "
          f"Bound: {BOUND_S} s and {BOUND_MB // 1024} GiB.", "",
          "| method | wall s | peak RSS MB | within bound | mean cosine (held-out) |", "| --- | ---: | ---: | --- | ---: |"]
    md += [f"| {r['method']} | {r['wall_s']} | {r['peak_rss_mb']} | {'yes' if r['within_bound'] else 'NO'} | "
           f"{r['mean_cosine']:.4f} |" for r in rows]
    md += ["", "Reproduce: `make bench-quantize-cost`.", ""]
    (results / "quantize-cost.md").write_text("\n".join(md))
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
