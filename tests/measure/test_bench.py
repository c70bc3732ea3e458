"""bench and report on the tiny model: every baseline really runs, the JSON follows its schema, the
report renders from it alone, and bad input fails with one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
import shutil

import jsonschema
import numpy as np
import pytest

from squeezeedge.measure.bench import SCHEMA_FILE

from ..conftest import cli

ALL = ["squeezeedge int8 (host)", "squeezeedge fp32 (host)", "pytorch fp32", "onnxruntime fp32", "onnxruntime int8",
       "onnxruntime int8 (its own recipe)", "tflite fp32", "tflite int8"]


@pytest.fixture(scope="session")
def bench_json(int8_lib, fp32_lib, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    out = d / "run.json"
    res = cli("--workdir", d, "bench", int8_lib, fp32_lib, "--warmup", 1, "--repeat", 12, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def _rt(rep: dict, name: str) -> dict:
    return next(r for r in rep["runtimes"] if r["name"] == name)


def test_bench_times_every_runtime_and_follows_the_schema(bench_json):
    rep = json.loads(bench_json.read_text())
    jsonschema.validate(rep, json.loads(SCHEMA_FILE.read_text()))
    assert [r["name"] for r in rep["runtimes"]] == ALL
    for r in rep["runtimes"]:
        assert r["status"] == "ok", r["reason"]
        assert len(r["samples_ms"]) == 12 and r["stats"]["n"] == 12
        assert r["stats"]["median_ms"] == pytest.approx(np.median(r["samples_ms"]), rel=1e-3)
        assert r["stats"]["min_ms"] <= r["stats"]["median_ms"] <= r["stats"]["p90_ms"] <= r["stats"]["p99_ms"]
        assert r["verdict"] in ("VALID", "INVALID") and r["model_bytes"] > 0
    assert rep["method"]["reference"] == "pytorch fp32" and rep["method"]["rounds"] == 12
    assert rep["machine"]["cores"] >= 1 and rep["machine"]["memory_gb"] > 0 and rep["machine"]["cpu"]
    assert len(rep["git"]["commit"] or "") == 40 and rep["versions"]["apache-tvm"]
    assert rep["threads"] == 2 and rep["fidelity"]["samples"] > 0
    # libraries run as squeezeedge.runtime.load sets them up: the bench sets no TVM variable of its own
    assert not any(k.startswith("TVM_") for k in rep["method"]["thread_pools"])
    for r in rep["runtimes"]:
        if r["family"] == "squeezeedge":
            assert r["info"]["thread_pool"]["threads"] == 2 and r["info"]["thread_pool"]["spin_count"] == 1000


def test_bench_outputs_agree_with_pytorch(bench_json):
    """Stated tolerances vs PyTorch fp32 on the bench input: fp32 runtimes max abs 1e-4 (TFLite 1e-3: XNNPACK
    reorders sums); int8 runtimes keep the sign of each logit and a cosine >= 0.98."""
    rep = json.loads(bench_json.read_text())
    for name in ("squeezeedge fp32 (host)", "onnxruntime fp32"):
        assert _rt(rep, name)["agreement"]["max_abs_diff"] <= 1e-4
    assert _rt(rep, "tflite fp32")["agreement"]["max_abs_diff"] <= 1e-3
    for name in ("squeezeedge int8 (host)", "onnxruntime int8", "onnxruntime int8 (its own recipe)", "tflite int8"):
        assert _rt(rep, name)["agreement"]["cosine"] >= 0.98, name


def test_onnxruntime_also_runs_its_own_int8_recipe(bench_json):
    """Our recipe leaves outputs unquantized, which onnxruntime runs slower (no fused QLinear ops), so the
    bench also times onnxruntime on the same export quantized its own way: every output quantized, no
    smoothing, float embeddings, the same calibration texts and scheme."""
    rep = json.loads(bench_json.read_text())
    own = _rt(rep, "onnxruntime int8 (its own recipe)")
    m = json.loads((Path(own["info"]["model"]).parent / "manifest.json").read_text())
    sch = m["results"]["scheme"]
    assert sch["float_outputs"] == [] and sch["smooth_quant_alpha"] is None and sch["embeddings"] == "float"
    from squeezeedge.artifact import sha256_file
    from squeezeedge.stages.calibdata import DEFAULT_CORPUS

    assert m["config"]["data_sha256"] == sha256_file(DEFAULT_CORPUS) and m["config"]["num_samples"] == 16


def test_tflite_models_come_from_the_converter(bench_json):
    (art,) = [d for d in (bench_json.parent / "tflite").iterdir() if (d / "manifest.json").is_file()]
    m = json.loads((art / "manifest.json").read_text())
    assert m["stage"] == "tflite" and m["results"]["versions"]["litert-torch"]
    from ai_edge_litert.interpreter import Interpreter

    ops = {o["op_name"] for o in Interpreter(str(art / "model-int8.tflite"))._get_ops_details()}
    assert "CONV_2D" in ops  # SqueezeBERT's grouped 1x1 convolutions, converted
    kinds = {d["dtype"] for d in Interpreter(str(art / "model-int8.tflite")).get_tensor_details()}
    assert np.int8 in kinds


def test_report_renders_tables_and_plots(bench_json, tmp_path):
    import matplotlib.image

    res = cli("report", bench_json, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    for name in ALL:
        assert f"| {name} |" in md
    assert "speed-up over each baseline" in md and "<table>" in (tmp_path / "rep" / "report.html").read_text()
    for png in ("latency.png", "speedup.png", "agreement.png", "size.png"):
        img = matplotlib.image.imread(tmp_path / "rep" / png)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # a picture, not a blank


def test_report_fail_on_regression(bench_json, tmp_path):
    rep = json.loads(bench_json.read_text())
    slower = copy.deepcopy(rep)
    slower["created"] = "2999-01-01T00:00:00Z"
    lib = _rt(slower, "squeezeedge int8 (host)")
    lib["stats"]["median_ms"] = _rt(rep, "squeezeedge int8 (host)")["stats"]["median_ms"] * 1.5
    (tmp_path / "new.json").write_text(json.dumps(slower))
    res = cli("report", bench_json, tmp_path / "new.json", "--out", tmp_path / "r", "--fail-on", "median:5%")
    assert res.exit_code == 13 and "squeezeedge int8 (host) median" in res.stderr and "+50.0%" in res.stderr
    assert "history" in (tmp_path / "r" / "report.md").read_text()  # the report is still written
    res = cli("report", bench_json, tmp_path / "new.json", "--out", tmp_path / "r", "--fail-on", "median:60%")
    assert res.exit_code == 0, res.output
    res = cli("report", bench_json, "--out", tmp_path / "r", "--fail-on", "p99")
    assert res.exit_code == 3 and "median:P%" in res.stderr


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(schema_version=2), "schema version 2 is not supported"),
    (lambda r: r.update(schema="something-else"), "not a squeezeedge bench result"),
    (lambda r: r["runtimes"][0].pop("stats"), "does not follow the schema at runtimes/0"),
])
def test_report_refuses_other_schemas(bench_json, tmp_path, change, message):
    rep = json.loads(bench_json.read_text())
    change(rep)
    (tmp_path / "x.json").write_text(json.dumps(rep))
    res = cli("report", tmp_path / "x.json", "--out", tmp_path / "r")
    assert res.exit_code == 3 and message in res.stderr, res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "r" / "report.md").exists()


def test_baseline_that_cannot_run_is_skipped_with_why(fp32_lib, tmp_path):
    """An fp32 library's lineage has no int8 model: onnxruntime int8 is skipped, the rest still run."""
    out = tmp_path / "r.json"
    res = cli("bench", fp32_lib, "--baselines", "ort", "--repeat", 10, "--warmup", 0, "--out", out)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    skipped = _rt(rep, "onnxruntime int8")
    assert skipped["status"] == "skipped" and "no int8 model in the library's lineage" in skipped["reason"]
    assert _rt(rep, "onnxruntime fp32")["status"] == "ok" and _rt(rep, "squeezeedge fp32 (host)")["status"] == "ok"


def test_library_for_another_architecture_is_refused(cross_libs, tmp_path):
    res = cli("bench", cross_libs[("rpi4", "fp32")], "--baselines", "none", "--out", tmp_path / "r.json")
    assert res.exit_code == 5 and "is built for aarch64" in res.stderr and "--tracker" in res.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--baselines", "tvm"], "unknown --baselines 'tvm' (torch, ort, tflite, or none)"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--min-seconds", "0"], "--min-seconds must be > 0"),
    (["--tracker", "127.0.0.1:1"], "--tracker and --key go together"),
])
def test_bench_bad_options(fp32_lib, tmp_path, args, message):
    res = cli("bench", fp32_lib, *args, "--out", tmp_path / "r.json")
    assert res.exit_code == 3 and message in res.stderr


def test_bench_out_must_be_json_and_lib_must_exist(fp32_lib, tmp_path):
    res = cli("bench", fp32_lib, "--out", tmp_path / "r.txt")
    assert res.exit_code == 3 and "must name a .json file" in res.stderr
    res = cli("bench", tmp_path / "nothing", "--out", tmp_path / "r.json")
    assert res.exit_code == 5 and "nothing" in res.stderr


def test_two_builds_of_one_kind_keep_separate_rows(fp32_lib, tmp_path):
    """An A/B of two libraries with the same precision and target: each keeps its own row and samples."""
    other = tmp_path / "fp32-copy"
    shutil.copytree(fp32_lib, other)
    out = tmp_path / "ab.json"
    res = cli("bench", fp32_lib, other, "--baselines", "none", "--repeat", 10, "--warmup", 0, "--out", out)
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["runtimes"]
    names = [r["name"] for r in rows]
    assert names == [f"squeezeedge fp32 (host) [{fp32_lib.name}]", "squeezeedge fp32 (host) [fp32-copy]"]
    assert all(len(r["samples_ms"]) == 10 for r in rows)


def test_rounds_shuffle_the_order_so_no_runtime_always_follows_the_same_one():
    """A runtime's predecessor matters (a thread pool woken by the call before): over the rounds each
    runtime is preceded by every other one, and every runtime runs once a round."""
    from squeezeedge.measure.baselines import Runner
    from squeezeedge.measure.bench import BenchConfig
    from squeezeedge.measure.timing import interleave

    calls = []
    runners = [Runner(name, "test", "fp32", lambda feed, name=name: calls.append(name)) for name in "abcd"]
    samples, _ = interleave(runners, {"x": 0}, BenchConfig(warmup=0, repeat=40))
    assert {n: len(v) for n, v in samples.items()} == {n: 40 for n in "abcd"}
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    before = {n: {r[r.index(n) - 1] for r in rounds if r.index(n) > 0} for n in "abcd"}
    assert all(len(v) == 3 for v in before.values()), before
