"""Default CPU schedules for reductions: a layer norm across the rows of a row-major tensor (NCW's
channel axis) and one along them (NWC; softmax too, as one loop over rows) get the reduction schedules,
a shape they do not divide falls back to MetaSchedule's rule, and all compute numpy's values; a fused
chain of elementwise ops becomes one loop."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.schedules import _reductions, default_schedules

TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": 2}


def _layer_norm_module(shape, axis):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    g = relax.Var("g", relax.TensorType((shape[axis],), "float32"))
    b = relax.Var("b", relax.TensorType((shape[axis],), "float32"))
    with bb.function("main", [x, g, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.layer_norm(x, g, b, axes=[axis], epsilon=1e-5))
        bb.emit_func_output(out)
    return relax.transform.LegalizeOps()(bb.get())


def _prim(mod):
    return next(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))


# NCW at 16 and 12 tokens (the boards' first buckets): fewer adjacent outputs than 32 still take the column
# plan, vectorized 16 or 4 wide (before: MetaSchedule's scalar loops, 7.7 M of a 157 M fp32 inference on the
# Cortex-A72, results/PERFORMANCE-LOG.md 48). Rows of an even length along them take the one-loop form (2-lane
# vectors where 4 do not divide: the 14-token bucket's softmax); an odd one falls back
@pytest.mark.parametrize("shape, axis, ours", [((1, 64, 96), 1, True), ((1, 96, 64), 2, True),
                                               ((1, 64, 16), 1, True), ((1, 64, 12), 1, True),
                                               ((1, 10, 30), 2, True), ((1, 10, 27), 2, False)])
def test_layer_norm_schedule_and_values(shape, axis, ours):
    mod = _layer_norm_module(shape, axis)
    one = tvm.IRModule({"main": _prim(mod).with_attr("global_symbol", "main")})
    assert (_reductions(one) is not None) == ours
    target = tvm.target.Target(TARGET)
    mod, counts = default_schedules(mod, target)
    assert counts == {"tensorized": 0, "tiled": 0, "parallel": 1, "naive": 0}
    if ours and axis == len(shape) - 1:  # along rows: one parallel loop over rows does it all
        assert _prim(mod).script().count("T.parallel") == 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32) * 3 + 1
    g, b = rng.standard_normal((2, shape[axis]), dtype=np.float32)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (x, g, b))).numpy()
    mean = x.mean(axis=axis, keepdims=True)
    var = x.var(axis=axis, keepdims=True)
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    ref = (x - mean) / np.sqrt(var + 1e-5) * g.reshape(bshape) + b.reshape(bshape)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_a_fused_chain_of_ops_runs_as_one_parallel_loop():
    """reshape -> multiply -> cast -> subtract -> transpose, fused into one kernel by TVM (as around the
    attention heads): every intermediate block is inlined, one parallel loop is left, values exact."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64, 96), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.reshape(x, (1, 64, 4, 24))
            y = relax.op.astype(relax.op.multiply(y, relax.const(2.0, "float32")), "int16")
            y = relax.op.permute_dims(relax.op.subtract(y, relax.const(3, "int16")), [0, 2, 1, 3])
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = relax.get_pipeline("zero")(bb.get())  # legalize, annotate, fuse: what build's fuse() runs
    target = tvm.target.Target(TARGET)
    mod, counts = default_schedules(mod, target)
    assert counts == {"tensorized": 0, "tiled": 0, "parallel": 1, "naive": 0}
    script = _prim(mod).script()
    assert script.count("T.parallel") == 1 and script.count("T.sblock(") <= 2  # root + one block
    v = np.random.default_rng(0).uniform(-50, 50, (1, 64, 96)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    ref = ((v.reshape(1, 64, 4, 24) * 2).astype(np.int16) - 3).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(v)).numpy(), ref)


# rows of 64 and of 20 keys (a 20-token bucket's attention: 4 lanes, where they were scalar loops)
@pytest.mark.parametrize("keys, lanes", [(64, 8), (20, 4)])
def test_softmax_runs_as_one_loop_over_rows(keys, lanes):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 16, keys), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.softmax(x, axis=-1))
        bb.emit_func_output(out)
    target = tvm.target.Target(TARGET)
    mod, counts = default_schedules(relax.get_pipeline("zero")(bb.get()), target)
    assert counts == {"tensorized": 0, "tiled": 0, "parallel": 1, "naive": 0}
    script = _prim(mod).script()
    assert script.count("T.parallel") == 1 and script.count(f"T.vectorized(T.int64({lanes}))") >= 3  # max, exp, sum, out
    v = np.random.default_rng(1).standard_normal((1, 4, 16, keys)).astype(np.float32) * 4
    got = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](tvm.runtime.tensor(v)).numpy()
    e = np.exp(v - v.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_packing_into_a_blocked_layout_unrolls_the_small_tile():
    """u8 [t, heads*d] -> int16 (x - zero point) packed [heads, t/8, d/2, 8, 2] (the attention's second
    operand, as integerize builds it): parallel outer loops, the 8 x 2 tile unrolled, numpy's bytes."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 64), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.subtract(relax.op.astype(x, "int16"), relax.const(9, "int16"))
            y = relax.op.reshape(y, (1, 4, 8, 2, 16, 2))
            out = bb.emit_output(relax.op.permute_dims(y, [0, 3, 1, 4, 2, 5]))
        bb.emit_func_output(out)
    target = tvm.target.Target(TARGET)
    mod, counts = default_schedules(relax.get_pipeline("zero")(bb.get()), target)
    assert counts == {"tensorized": 0, "tiled": 0, "parallel": 1, "naive": 0}
    script = _prim(mod).script()
    assert script.count("T.parallel") == 1 and script.count("T.unroll") == 2
    v = np.random.default_rng(2).integers(0, 256, (1, 32, 64)).astype(np.uint8)
    ref = (v.astype(np.int16) - 9).reshape(1, 4, 8, 2, 16, 2).transpose(0, 3, 1, 4, 2, 5)
    got = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](tvm.runtime.tensor(v)).numpy()
    np.testing.assert_array_equal(got, ref)


def _mac_module(kind: str, dtype: str = "float32"):
    """A grouped 1x1 conv1d (NCW, SqueezeBERT's layers) with a bias and GELU after it, or a batched matmul
    (the attention's), legalized and fused as build does."""
    bb = relax.BlockBuilder()
    if kind == "conv1d":
        x = relax.Var("x", relax.TensorType((1, 64, 48), dtype))
        w = relax.Var("w", relax.TensorType((96, 16, 1), dtype))
        b = relax.Var("b", relax.TensorType((1, 96, 1), dtype))
        params = [x, w, b]
    else:
        x = relax.Var("x", relax.TensorType((1, 4, 48, 32), dtype))
        w = relax.Var("w", relax.TensorType((1, 4, 32, 64), dtype))
        params = [x, w]
    with bb.function("main", params):
        with bb.dataflow():
            if kind == "conv1d":
                y = bb.emit(relax.op.nn.conv1d(x, w, groups=4))
                out = bb.emit_output(relax.op.nn.gelu(relax.op.add(y, b)))
            else:
                out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    target = tvm.target.Target(TARGET | {"mcpu": "skylake-avx512"})
    with target:
        return relax.get_pipeline("zero")(bb.get()), target


@pytest.mark.parametrize("kind", ["conv1d", "matmul"])
@pytest.mark.parametrize("mcpu, lanes, fma", [("skylake-avx512", 16, "zmm"), ("haswell", 8, "ymm")])
def test_multiply_accumulate_kernels_are_register_tiled_and_exact(kind, mcpu, lanes, fma):
    """No tuning database: an fp32 conv1d/matmul gets register tiles of vector FMAs (the kernels that ran
    naive before: 1626 ms for full SqueezeBERT fp32), same values as numpy."""
    from squeezeedge.lowering.schedules import vector_lanes

    mod, _ = _mac_module(kind)
    target = tvm.target.Target(TARGET | {"mcpu": mcpu})
    assert vector_lanes(target) == lanes
    mod, counts = default_schedules(mod, target)
    assert counts["tiled"] == 1 and counts["naive"] == 0
    kernel = next(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    asm = tvm.tirx.build(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}),
                         target=target).inspect_source("asm")
    assert re.search(rf"vfmadd\w+\s+.*%{fma}", asm)
    ex = tvm.compile(mod, target=target)
    if mcpu == "skylake-avx512" and "avx512f" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU cannot run AVX-512 code")
    rng = np.random.default_rng(3)
    args = [rng.standard_normal([int(d) for d in p.ty.shape], dtype=np.float32)
            for p in mod["main"].params]
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()
    if kind == "conv1d":
        x, w, b = args
        y = np.concatenate([w[g * 24:(g + 1) * 24, :, 0] @ x[0, g * 16:(g + 1) * 16] for g in range(4)])[None] + b
        from scipy.special import erf

        ref = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    else:
        ref = args[0] @ args[1]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-5)
