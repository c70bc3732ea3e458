"""TVM build: fp32 and real-integer int8 libraries of the tiny model, loaded and checked by number."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from squeezeedge import runtime
from squeezeedge.stages.calibdata import DEFAULT_CORPUS, encode, load_tokenizer, read_texts
from squeezeedge.runtime import random_inputs
from squeezeedge.stages.quantize import reference_session

from ..conftest import FAST_Q, TINY_SEQ, cli, manifest

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _feeds(n, seed=77):
    return [random_inputs(30528, 2, 1, TINY_SEQ, seed + i) for i in range(n)]


def test_fp32_library_matches_onnxruntime(fp32_lib, tiny_export):
    """Untuned, every kernel got a default parallel schedule (none left as naive loops) and fast math
    (softmax, erf); outputs stay within 1e-4 of onnxruntime."""
    sched = json.loads((fp32_lib / "metadata.json").read_text())["tuning"]["kernels_with_default_schedule"]
    assert sched["parallel"] >= 10 and sched["naive"] == 0
    model = runtime.load(fp32_lib)
    sess = ort.InferenceSession(str(tiny_export / "model.onnx"))
    for feed in _feeds(4):
        got = model(**feed)
        assert isinstance(got, list) and got[0].shape == (1, 2) and got[0].dtype == np.float32
        np.testing.assert_allclose(got[0], sess.run(None, feed)[0], atol=1e-4, rtol=0)


def test_int8_library_matches_onnxruntime_int8(int8_lib, tiny_int8):
    """Stated tolerance: max abs 1e-3 from onnxruntime running the same QDQ model op by op (ONNX's
    definition; its fused int8 kernels saturate on CPUs without VNNI, see quantize.reference_session)."""
    model = runtime.load(int8_lib)
    sess = reference_session(tiny_int8 / "model.onnx")
    for feed in _feeds(4):
        np.testing.assert_allclose(model(**feed)[0], sess.run(None, feed)[0], atol=1e-3, rtol=0)


def test_int8_library_keeps_quantize_fidelity(int8_lib, tiny_export):
    """On held-out real text, the TVM int8 library vs fp32 onnxruntime meets the quantize thresholds."""
    model = runtime.load(int8_lib)
    sess = ort.InferenceSession(str(tiny_export / "model.onnx"))
    texts = list(read_texts(DEFAULT_CORPUS).texts[-48:])
    tok, _ = load_tokenizer(None, TINY_SEQ)
    feeds = encode(tok, texts, 30528)
    cos, agree = [], []
    for i in range(len(texts)):
        feed = {k: v[i:i + 1] for k, v in feeds.items()}
        a, b = sess.run(None, feed)[0].ravel(), model(**feed)[0].ravel()
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        agree.append(a.argmax() == b.argmax())
    assert np.mean(cos) >= 0.99 and np.mean(agree) >= 0.9


def test_int8_library_computes_in_integers(int8_lib):
    """Every quantized layer became an integer kernel, and no compiled conv1d/matmul multiplies in float."""
    meta = json.loads((int8_lib / "metadata.json").read_text())
    cov = meta["int8"]
    assert cov["quantized_layers"] == 18  # 2 layers x (6 convs + 2 attention matmuls) + pooler + classifier
    assert cov["integer_kernels"] == 18 and (cov["conv1d"], cov["matmul_weight"], cov["matmul_activation"]) == (12, 2, 4)
    assert cov["compiled_float_mac_kernels"] == 0 and cov["compiled_integer_mac_kernels"] >= 9
    # host target (x86): weight layers use kernels pre-packed for VNNI's vpdpbusd or AVX2's vpmaddwd,
    # tensorized onto that instruction by the default schedule (no database here)
    assert cov["packed_instruction"] in ("vpdpbusd", "vpmaddwd") and cov["packed_kernels"] >= 4
    assert cov["tensorized_kernels"] >= cov["packed_kernels"]
    assert meta["tuning"]["kernels_with_default_schedule"]["naive"] == 0


def test_avx2_target_builds_7_bit_layers_on_vpmaddubsw(tiny_export, tmp_path):
    """x86-avx2 quantizes weights to 7 bits, so every weight layer takes the u8 x s8 kernel (vpmaddubsw,
    twice vpmaddwd's products); it stays exact: onnxruntime's QDQ reference agrees to float rounding."""
    q, lib = tmp_path / "q7", tmp_path / "lib"
    # outputs quantized (onnxruntime's way, Gemm's aside): the GELU inputs are 8-bit, so GELU is a table
    old = ["--float-outputs", "Gemm", "--smooth-quant", "none"]
    assert cli("-q", "quantize", tiny_export, *FAST_Q, *old, "--target", "x86-avx2", "--out", q).exit_code == 0
    res = cli("-q", "build", q, "--target", "x86-avx2", "--out", lib)
    assert res.exit_code == 0, res.output
    meta = json.loads((lib / "metadata.json").read_text())
    # weight layers on vpmaddubsw; the attention's activation x activation matmuls (u8 x u8, no 7-bit
    # operand) on the exact vpmaddwd kernel
    assert meta["int8"]["packed_instruction"] == "vpmaddubsw+vpmaddwd" and meta["int8"]["packed_kernels"] >= 6
    assert meta["int8"]["tensorized_kernels"] >= meta["int8"]["packed_kernels"]
    assert meta["validation"]["max_abs_diff"] <= 1e-3
    # the 2 GELUs as tables (the pooler's tanh reads its Gemm's float output: quantize leaves Gemm outputs
    # unquantized); Q, K, V and the attention output move as bytes
    assert meta["int8"]["lookup_tables"] == 2 and meta["int8"]["round_trips_dropped"] == 8


def test_dump_ir_writes_one_file_per_lowering_step_and_changes_nothing(int8_lib, tiny_int8, tmp_path):
    """build --dump-ir: one NN-<step>.py per step of the declared pipeline, in its order; the library built
    with it is bit-identical to the one built without."""
    import tvm

    from squeezeedge.lowering.pipeline import step_names

    res = cli("-q", "build", tiny_int8, "--target", "host", "--dump-ir", tmp_path / "ir", "--out", tmp_path / "lib")
    assert res.exit_code == 0, res.output
    declared = step_names(tvm.target.Target("llvm"))
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == [f"{i:02d}-{name}.py" for i, name in enumerate(declared)], files
    assert "arm_sdot" not in (tmp_path / "ir" / "01-Integerize.py").read_text()
    assert "vnni_dot" in (tmp_path / "ir" / "01-Integerize.py").read_text()  # the packed kernels appear there
    assert "T.prim_func" in (tmp_path / "ir" / files[-1]).read_text()  # fused TIR at the end
    feed = random_inputs(30528, 2, 1, TINY_SEQ, 5)
    with_dump = runtime.load(tmp_path / "lib")(**feed)[0]
    assert np.array_equal(with_dump, runtime.load(int8_lib)(**feed)[0])


def test_simulated_int8_is_detected_as_float(tiny_int8, tmp_path):
    """The same inspection sees float multiplies in TVM's as-imported QDQ build (the check can fail)."""
    out = tmp_path / "sim"
    res = cli("-q", "build", tiny_int8, "--simulated-int8", "--out", out)
    assert res.exit_code == 0, res.output
    cov = json.loads((out / "metadata.json").read_text())["int8"]
    # 18 float layers; with float outputs, layers of one shape compile to one shared kernel: 9 kernels
    assert cov["compiled_float_mac_kernels"] == 9 and cov["compiled_integer_mac_kernels"] == 0


def test_metadata_describes_the_library(int8_lib, tiny_int8):
    meta = json.loads((int8_lib / "metadata.json").read_text())
    assert meta["precision"] == "int8" and meta["target"]["name"] == "host"
    assert meta["model"]["sha256"] == manifest(tiny_int8)["artifact_sha256"]
    assert [i["name"] for i in meta["inputs"]] == NAMES
    assert meta["inputs"][0]["shape"] == [1, TINY_SEQ] and meta["inputs"][0]["dtype"] == "int64"
    assert meta["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [1, 2]}]
    assert meta["tuning"]["tuned_tasks"] == 0 and meta["database"] is None
    assert meta["versions"]["apache-tvm"] == "0.27.0.post1"
    res = cli("inspect", int8_lib)
    assert res.exit_code == 0 and "metadata.json" in res.stdout and "integer_kernels" in res.stdout


@pytest.mark.parametrize("feed_change, words", [
    (lambda f: f.pop("token_type_ids"), "missing input 'token_type_ids'"),
    (lambda f: f.update(position_ids=f["input_ids"]), "unknown input 'position_ids'"),
    (lambda f: f.update(input_ids=f["input_ids"][:, :8]), "has shape [1, 8], the library was built for [1, 32]"),
    (lambda f: f.update(input_ids=f["input_ids"].astype(np.float32)), "has dtype float32"),
    (lambda f: f.update(input_ids=f["input_ids"] + 40000), "values outside 0..30527"),
])
def test_bad_runtime_inputs(fp32_lib, feed_change, words):
    model = runtime.load(fp32_lib)
    feed = _feeds(1)[0]
    feed_change(feed)
    from squeezeedge.errors import InputError

    with pytest.raises(InputError, match=None) as err:
        model(**feed)
    assert words in str(err.value)


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "does not match the sha256"),
    (lambda p: _flip_byte(p, 1000), "does not match the sha256"),
    (lambda p: p.unlink(), "is missing"),
])
def test_corrupt_library_is_refused(fp32_lib, tmp_path, damage, words):
    copy = tmp_path / "lib"
    shutil.copytree(fp32_lib, copy)
    damage(copy / "model.so")
    from squeezeedge.errors import ArtifactError

    with pytest.raises(ArtifactError) as err:
        runtime.load(copy)
    assert words in str(err.value)


def test_truncated_library_with_matching_metadata_fails_cleanly(fp32_lib, tmp_path):
    """Even if metadata were rewritten to match, a truncated .so fails with one line, not a crash."""
    copy = tmp_path / "lib"
    shutil.copytree(fp32_lib, copy)
    lib = copy / "model.so"
    lib.write_bytes(lib.read_bytes()[:4096])
    meta = json.loads((copy / "metadata.json").read_text())
    from squeezeedge.artifact import sha256_file
    from squeezeedge.errors import ArtifactError

    meta["library"]["sha256"] = sha256_file(lib)
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a complete ELF shared library"):
        runtime.load(copy)


def test_unimportable_onnx_op_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["input_ids", "w"], ["logits"], name="the_conv")], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.UINT8, [1, 2, 4])], 
        [helper.make_tensor_value_info("logits", TensorProto.INT32, [1, 2, 4])],
        [helper.make_tensor("w", TensorProto.UINT8, [2, 2, 1], [1, 2, 3, 4])])
    from squeezeedge.lowering.relax import import_onnx
    from squeezeedge.errors import CompileError

    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(CompileError) as err:
        import_onnx(path, [{"name": "input_ids", "shape": [1, 2, 4]}])
    assert "cannot convert operator ConvInteger (first at node 'the_conv')" in str(err.value)


def test_missing_cross_toolchain_names_the_package(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "rpi4"
    res = cli("build", tiny_export, "--target", "rpi4", "--out", out)
    assert res.exit_code == 9
    assert "aarch64-linux-gnu-g++, which is not installed (apt-get install g++-aarch64-linux-gnu)" in res.stderr
    assert not out.exists()


def test_build_refuses_a_non_model_artifact(int8_lib, tmp_path):
    res = cli("build", int8_lib, "--out", tmp_path / "o")
    assert res.exit_code == 3 and "build takes an export or quantize artifact" in res.stderr


def test_dynamic_export_builds_through_the_static_workaround(tmp_path):
    """A --dynamic export fails TVM 0.27's VM codegen as imported; build fixes its dims and folds the
    shape arithmetic first (build.static_onnx), and the library then matches onnxruntime."""
    exp, lib = tmp_path / "dyn", tmp_path / "dyn-host"
    assert cli("-q", "export", "--model", "squeezebert-tiny", "--dynamic", "--seq-len", 16, "--out", exp).exit_code == 0
    res = cli("-q", "build", exp, "--out", lib)
    assert res.exit_code == 0, res.output
    meta = json.loads((lib / "metadata.json").read_text())
    assert meta["inputs"][0]["shape"] == [1, 16] and meta["outputs"][0]["shape"] == [1, 2]
    model = runtime.load(lib)
    sess = ort.InferenceSession(str(exp / "model.onnx"))
    feed = random_inputs(30528, 2, 1, 16, seed=3)
    np.testing.assert_allclose(model(**feed)[0], sess.run(None, feed)[0], atol=1e-4, rtol=0)


def test_library_for_a_cpu_this_machine_lacks_is_refused(fp32_lib, tmp_path):
    """metadata.json records the target's ISA extensions; load refuses before an illegal instruction."""
    copy = tmp_path / "lib"
    shutil.copytree(fp32_lib, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    assert "avx2" in meta["target"]["cpu_features"]
    meta["target"]["cpu_features"].append("avx1024vnni")  # an extension no CPU has
    (copy / "metadata.json").write_text(json.dumps(meta))
    from squeezeedge.errors import ArtifactError

    with pytest.raises(ArtifactError, match="built for a CPU with avx1024vnni, which this CPU lacks"):
        runtime.load(copy)


def test_profile_accounts_for_the_kernels(int8_lib):
    """Per-kernel times through the VM's instrument hook: every call is counted, kernels sum to no more
    than the wall time, int8 layers that differ only in their constants are summed under one name."""
    from squeezeedge.measure.profile import kernel_group

    assert kernel_group("fused_conv1d2_subtract4_cast7_quantize13_dequantize10") == \
        "fused_conv1d2_subtract_cast_quantize_dequantize"
    res = cli("--json", "profile", int8_lib, "--runs", 2)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    kernels = {r["kernel"]: r for r in rep["kernels"]}
    assert sum(r["ms"] for r in rep["kernels"]) <= rep["profiled_wall_ms"] * 1.05
    assert 0 < rep["wall_ms"] < rep["profiled_wall_ms"] * 1.5  # the hook adds; noise can too
    packed = [r for name, r in kernels.items() if "avx2_madd" in name or "vnni_dot" in name]
    assert packed and all(r["calls"] >= 1 and r["ms"] > 0 for r in packed)
    res = cli("profile", int8_lib.parent / "nothing-here")
    assert res.exit_code == 5 and "Traceback" not in res.output


def test_validation_cosine_counts_two_zero_outputs_as_equal():
    from squeezeedge.stages.build import cosine

    zero, one = np.zeros(2), np.array([1.0, 0.0])
    assert cosine(zero, zero) == 1.0 and cosine(zero, one) == 0.0 and cosine(one, one) == pytest.approx(1.0)


def test_int8_cosine_bound_follows_onnxruntimes_own_drift():
    """0.99 where onnxruntime's two int8 paths agree; where they drift apart (trained models with
    outliers), the library is held to that drift minus 0.01, never to more than 0.99."""
    from squeezeedge.stages.build import int8_cosine_bound

    assert int8_cosine_bound(0.99, 0.9999) == int8_cosine_bound(0.99, 0.99) == 0.99
    assert int8_cosine_bound(0.99, 0.9315) == pytest.approx(0.9215)


def test_divides_by_a_scalar_constant_become_multiplies_within_one_ulp():
    """GELU's x / sqrt(2) and the attention's / sqrt(d) turn into multiplies by the reciprocal; a divide by
    a tensor constant or by a variable is left alone."""
    import tvm
    from tvm import relax

    from squeezeedge.lowering.divides import reciprocal_divides

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 64), "float32"))
    with bb.function("main", [x]):
        a = bb.emit(relax.op.divide(x, relax.const(np.float32(1.4142135))))
        b = bb.emit(relax.op.divide(a, relax.const(np.linspace(1, 2, 64, dtype=np.float32))))
        bb.emit_func_output(relax.op.divide(b, x))
    mod = bb.get()
    new = reciprocal_divides(mod)
    assert new["main"].script().count("R.divide") == 2 and new["main"].script().count("R.multiply") == 1
    data = np.random.default_rng(0).uniform(-8, 8, (4, 64)).astype(np.float32)
    run = lambda m: relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())["main"](  # noqa: E731
        tvm.runtime.tensor(data)).numpy()
    np.testing.assert_array_max_ulp(run(new), run(mod), maxulp=2)
