"""Benchmark: untuned host builds of full-size SqueezeBERT next to onnxruntime, in one interleaved run.

Builds (or reuses) fp32 and int8 host libraries, then measures, round-robin in the same process so
machine noise hits every runtime alike: TVM fp32, TVM int8 (integer kernels), onnxruntime fp32 and
onnxruntime int8 (QDQ), each with the same thread count. Writes results/host-build-latency.{json,md}.

    python -m compiler.build_bench [--workdir build/bench] [--results results] [--rounds 7]
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import numpy as np

from . import console
from .artifact import tool_versions
from .build import BuildConfig, build_library
from .export import ExportConfig, export_model, random_inputs
from .fidelity_bench import _cpu
from .quantize import QuantizeConfig, quantize_model


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--rounds", type=int, default=7, show_default=True, help="Timed rounds (after one warm-up).")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--target", default="host", show_default=True)
@click.option("--databases", type=click.Path(path_type=Path), default=None,
              help="Directory with TARGET-fp32 and TARGET-int8 tuning databases (e.g. results/databases): "
                   "measure tuned builds.")
@click.option("--name", default="host-build-latency", show_default=True, help="results/NAME.{json,md}")
def main(workdir: Path, results: Path, rounds: int, threads: int, target: str, databases: Path | None, name: str):
    import onnxruntime as ort

    from . import runtime

    os.environ["TVM_NUM_THREADS"] = str(threads)
    exp = export_model(ExportConfig(model="squeezebert-uncased", seq_len=128), workdir / "squeezebert-export")
    q = quantize_model(exp.artifact.path, QuantizeConfig(target=target), workdir / f"squeezebert-int8-{target}")
    dbs = {p: (databases / f"{target}-{p}" if databases else None) for p in ("fp32", "int8")}
    tag = "tuned" if databases else "untuned"
    libs = {p: build_library(a.artifact.path, BuildConfig(target=target, database=dbs[p]),
                             workdir / f"squeezebert-{p}-{target}-{tag}")
            for p, a in (("fp32", exp), ("int8", q))}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    runners = {
        "tvm fp32": runtime.load(libs["fp32"].artifact.path),
        "tvm int8": runtime.load(libs["int8"].artifact.path),
    }
    sessions = {"onnxruntime fp32": exp.artifact.file("model.onnx"), "onnxruntime int8": q.artifact.file("model.onnx")}
    for runtime_name, path in sessions.items():
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        runners[runtime_name] = lambda s=sess, **feed: s.run(None, feed)
    feed = random_inputs(30528, 2, 1, 128, seed=1)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds + 1):
        for runtime_name, fn in runners.items():
            t0 = time.perf_counter()
            fn(**feed)
            if r:  # round 0 is the warm-up
                samples[runtime_name].append((time.perf_counter() - t0) * 1e3)
        console.info(f"  round {r}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in samples.items() if v))
    med = {k: float(np.median(v)) for k, v in samples.items()}
    sizes = {"tvm fp32": libs["fp32"].artifact.results["library"]["bytes"],
             "tvm int8": libs["int8"].artifact.results["library"]["bytes"],
             "onnxruntime fp32": exp.artifact.results["onnx_bytes"],
             "onnxruntime int8": q.artifact.results["int8_bytes"]}
    rows = [{"runtime": k, "median_ms": round(med[k], 2), "p90_ms": round(float(np.percentile(samples[k], 90)), 2),
             "vs_ort_fp32": round(med[k] / med["onnxruntime fp32"], 2),
             "vs_ort_int8": round(med[k] / med["onnxruntime int8"], 2),
             "artifact_mb": round(sizes[k] / 1e6, 1), "samples_ms": [round(x, 2) for x in samples[k]]}
            for k in runners]
    tuning = {p: libs[p].artifact.results["tuning"] for p in libs}
    rep = {"schema_version": 1, "benchmark": f"{tag} {target} builds vs onnxruntime, full-size SqueezeBERT",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": _cpu(), "cores": os.cpu_count(),
           "threads": threads, "batch": 1, "seq_len": 128, "rounds": rounds, "warmup": 1,
           "target": target, "tuning": tuning, "int8_coverage": libs["int8"].artifact.results["int8"],
           "compile_s": {p: libs[p].artifact.results["compile_s"] for p in libs},
           "versions": tool_versions(), "rows": rows}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(rep, indent=2) + "\n")
    md = [f"# {rep['benchmark']}", "",
          f"Measured {rep['created']} on {rep['cpu']} ({rep['cores']} cores), {threads} threads, batch 1, seq 128; "
          f"{rounds} interleaved rounds after 1 warm-up, same input for all. TVM target {target}; "
          + ("UNTUNED (TVM default schedules: naive loops until MetaSchedule tunes them). " if not databases else
             "tuned with " + "; ".join(f"{p}: {t['trials']} trials, {t['tuned_tasks']}/{t['tasks']} tasks, "
                                       f"{t['tuning_wall_s_total']} s of tuning" for p, t in tuning.items()) + ". ")
          + f"int8 library: {rep['int8_coverage']['integer_kernels']}/"
          f"{rep['int8_coverage']['quantized_layers']} quantized layers as integer kernels.", "",
          "| runtime | median ms | p90 ms | x ORT fp32 | x ORT int8 | model/library MB |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['runtime']} | {r['median_ms']} | {r['p90_ms']} | {r['vs_ort_fp32']} | {r['vs_ort_int8']} | "
           f"{r['artifact_mb']} |" for r in rows]
    md += ["", "The int8 library keeps the embedding tables in fp32 (94 MB of its size): only Conv/MatMul/Gemm "
           "are quantized. onnxruntime's int8 file is the QDQ model.", "",
           f"Reproduce: `make {'bench-tuned' if databases else 'bench-build'}`.", ""]
    (results / f"{name}.md").write_text("\n".join(md))
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
