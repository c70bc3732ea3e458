"""Transpose sinking: the transposes around a layer norm and a per-channel requantize cancel, and the
module computes the same outputs (compiled and run by TVM before and after)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.transposes import sink_transposes

C, W = 8, 16  # channels, width: the model's NCW convolution layout


def _module(per_channel_axis: int):
    """x (NCW) -> NWC -> layer norm -> NCW -> scale by a per-channel constant -> + per-channel bias
    (a reshaped input) -> NWC -> per-channel quantize/dequantize -> erf -> NCW."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, C, W), "float32"))
    bias = relax.Var("bias", relax.TensorType((C,), "float32"))
    with bb.function("main", [x, bias]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(x, [0, 2, 1]))
            ln = bb.emit(relax.op.nn.layer_norm(t, relax.const(rng.random(C, dtype=np.float32) + 0.5),
                                                relax.const(rng.random(C, dtype=np.float32)), axes=[-1]))
            u = bb.emit(relax.op.permute_dims(ln, [0, 2, 1]))
            m = bb.emit(relax.op.multiply(u, relax.const(rng.random((1, C, 1), dtype=np.float32) + 0.5)))
            a = bb.emit(relax.op.add(m, relax.op.reshape(bias, (1, C, 1))))
            v = bb.emit(relax.op.permute_dims(a, [0, 2, 1]))
            scale = relax.const(rng.random(C, dtype=np.float32) * 0.02 + 0.01)
            zp = relax.const(np.zeros(C, np.int8))
            q = bb.emit(relax.op.quantize(v, scale, zp, axis=per_channel_axis, out_dtype="int8"))
            d = bb.emit(relax.op.dequantize(q, scale, zp, axis=per_channel_axis, out_dtype="float32"))
            e = bb.emit(relax.op.erf(d))
            out = bb.emit_output(relax.op.permute_dims(e, [0, 2, 1]))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, *args):
    exe = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()


@pytest.mark.parametrize("axis", [-1, 2])
def test_transposes_cancel_and_outputs_match(axis):
    mod = _module(axis)
    sunk, counts = sink_transposes(mod)
    assert counts["before"] == 4
    assert counts["after"] == 0, sunk["main"].script()
    script = sunk["main"].script()
    assert "axis=1" in script and "axes=[1]" in script  # quantize's channel and layer norm's axis follow
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, C, W), dtype=np.float32)
    bias = rng.standard_normal(C, dtype=np.float32)
    ref = _run(mod, x, bias)
    got = _run(sunk, x, bias)
    assert got.shape == ref.shape == (1, C, W)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_a_transpose_with_a_non_sinkable_user_stays():
    """A transposed value added to an untransposed input of the same shape keeps its transpose."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, C, W), "float32"))
    y = relax.Var("y", relax.TensorType((1, W, C), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(x, [0, 2, 1]))
            out = bb.emit_output(relax.op.add(t, y))
        bb.emit_func_output(out)
    mod = bb.get()
    sunk, counts = sink_transposes(mod)
    assert counts == {"before": 1, "after": 1, "moved": 0}
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((1, C, W), dtype=np.float32), rng.standard_normal((1, W, C), dtype=np.float32)
    np.testing.assert_allclose(_run(sunk, x, y), x.transpose(0, 2, 1) + y, atol=1e-6)


def test_an_operand_is_reshaped_only_when_its_dims_keep_their_order():
    """x [1, 4, 4] transposed, plus a [4, 4] input: the input must be transposed too (a reshape would
    not move its elements), so the transpose stays before the add and the result is still right."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 4), "float32"))
    y = relax.Var("y", relax.TensorType((4, 4), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(x, [0, 2, 1]))
            a = bb.emit(relax.op.add(t, y))
            out = bb.emit_output(relax.op.exp(a))
        bb.emit_func_output(out)
    mod = bb.get()
    sunk, counts = sink_transposes(mod)
    assert counts["after"] == 1 and counts["moved"] == 0
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((1, 4, 4), dtype=np.float32), rng.standard_normal((4, 4), dtype=np.float32)
    np.testing.assert_allclose(_run(sunk, x, y), np.exp(x.transpose(0, 2, 1) + y), rtol=1e-6)


def test_transpose_sinks_through_a_head_split_and_a_keepdims_sum():
    """NWC x [1, W, C] -> NCW -> reshape into heads [1, H, C/H, W] -> per-head transpose -> exp, and a
    keepdims sum beside it: both end as one transpose of a reshaped x each; outputs unchanged."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, W, C), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(x, [0, 2, 1]))
            heads = bb.emit(relax.op.reshape(t, (1, 2, C // 2, W)))
            q = bb.emit(relax.op.permute_dims(heads, [0, 1, 3, 2]))
            e = bb.emit(relax.op.exp(q))
            s = bb.emit(relax.op.sum(heads, axis=[2], keepdims=True))
            out = bb.emit_output(relax.Tuple([e, s]))
        bb.emit_func_output(out)
    mod = bb.get()
    sunk, counts = sink_transposes(mod)
    assert counts["before"] == 2 and counts["after"] == 2, sunk["main"].script()
    assert "R.reshape(x" in sunk["main"].script()  # the split moved above the transposes
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, W, C), dtype=np.float32)
    exe = tvm.compile(sunk, target="llvm")
    got_e, got_s = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x))
    heads = x.transpose(0, 2, 1).reshape(1, 2, C // 2, W)
    np.testing.assert_allclose(got_e.numpy(), np.exp(heads.transpose(0, 1, 3, 2)), rtol=1e-6)
    np.testing.assert_allclose(got_s.numpy(), heads.sum(axis=2, keepdims=True), rtol=1e-5)


def test_a_transposed_value_with_another_use_is_not_sunk_past_it():
    """t = transpose(x) feeds both exp (sinkable) and a matmul (not): t must exist for the matmul, so
    the exp stays on t instead of adding a second transpose after it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, C, W), "float32"))
    y = relax.Var("y", relax.TensorType((C, 4), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(x, [0, 2, 1]))
            m = bb.emit(relax.op.matmul(t, y))
            e = bb.emit(relax.op.exp(t))
            out = bb.emit_output(relax.Tuple([m, e]))
        bb.emit_func_output(out)
    sunk, counts = sink_transposes(bb.get())
    assert counts == {"before": 1, "after": 1, "moved": 0}
