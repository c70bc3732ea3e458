"""compiler/lowering/accumulator_bias.py: a packed sdot kernel's ``a * float(acc) + b`` epilogue becomes sums
started at round(b / a) and one multiply, within half an accumulator step of the old values; before an
8-bit quantize the quantize's zero point and half step go into the start too (the top-byte convert then
floors a * float(acc) alone), within one step and nearly always equal; other kernels are left alone.
The kernels run here as plain TIR (no sdot): what is checked is the rewrite and the bias start's values."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.accumulator_bias import fold_accumulator_bias
from squeezeedge.lowering.int8 import SDOT, VNNI, _pack, _te_packed

M, K, N = 16, 64, 32


def _module(spec, quantize: bool):
    """s8 x [1, M, K] -> packed kernel -> a * float(acc) + b [-> quantize(., 1, z)]."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    a = ((rng.random(N) * 1e-3 + 1e-4) * (4 if quantize else 1)).astype(np.float32)  # quantized: both clips
    b = rng.normal(0, 2, N).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, M, K), spec.x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.add_func(_te_packed((1, M, K), N, 1, f"{spec.block}_test", spec), f"{spec.block}_test")
            acc = bb.emit(relax.call_tir(gv, [x, relax.const(_pack(w, 1, spec))], relax.TensorType((1, M, N), "int32")))
            y = bb.emit(relax.op.add(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), relax.const(a)),
                                     relax.const(b)))
            if quantize:
                y = bb.emit(relax.op.quantize(y, relax.const(np.float32(1.0)), relax.const(np.int8(3)), axis=-1,
                                              out_dtype="int8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), a


def _run(mod, x):
    ex = tvm.compile(relax.get_pipeline("zero")(mod), target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_sums_start_at_the_bias_and_the_epilogue_is_one_multiply():
    mod, a = _module(SDOT, quantize=False)
    new, n = fold_accumulator_bias(mod)
    script = new["main"].script()
    assert n == 1 and "R.add" not in script and script.count("R.multiply") == 1 and "_bias" in script
    x = np.random.default_rng(4).integers(-128, 128, (1, M, K)).astype(np.int8)
    x[0, 0] = 127  # the largest sums
    old, got = _run(mod, x), _run(new, x)
    assert np.all(np.abs(got - old) <= a / 2 * 1.001 + 1e-6 * np.abs(old))  # half an accumulator step
    assert not np.array_equal(got, old)  # the dropped remainder b - a * round(b / a) is really gone


def test_an_8_bit_quantize_after_takes_its_zero_point_and_half_step_into_the_start():
    """int8 out: the integer requantize (its scales below 1/2); the same values as quantize's but for ties."""
    mod, _ = _module(SDOT, quantize=True)
    new, n = fold_accumulator_bias(mod)
    script = new["main"].script()
    assert n == 1 and "R.quantize" not in script and "R.add" not in script and "accumulator_requantize" in script
    assert "R.astype" not in script  # no float on the way
    x = np.random.default_rng(5).integers(-128, 128, (1, M, K)).astype(np.int8)
    old, got = _run(mod, x).astype(int), _run(new, x).astype(int)
    assert np.abs(got - old).max() <= 1 and np.mean(got != old) < 0.01
    assert old.min() == -128 and old.max() == 127  # both clips reached


def test_other_kernels_are_left_alone():
    """x86's VNNI kernels (a three-operand FMA: the bias costs nothing there)."""
    mod, _ = _module(VNNI, quantize=False)
    new, n = fold_accumulator_bias(mod)
    assert n == 0 and "R.add" in new["main"].script()


def test_the_te_init_workaround_starts_every_output_at_its_bias():
    """TVM 0.27's te.create_prim_func drops a reduction's init; the kernel's TVMScript is rewritten so that
    each output starts at bias[n] (a zero input then gives the bias back)."""
    func = _te_packed((1, 4, K), N, 1, "main", SDOT, bias=True)
    assert "= bias[" in func.script()
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target="llvm")
    bias = np.arange(N, dtype=np.int32) * 1000 - 7
    out = tvm.runtime.tensor(np.zeros((1, 4, N), np.int32))
    lanes = SDOT.block_lanes(1)
    lib(tvm.runtime.tensor(np.zeros((1, 4, K), np.int8)), tvm.runtime.tensor(np.ones((1, N // lanes, K // 4, lanes, 4), np.int8)),
        tvm.runtime.tensor(bias), out)
    assert np.array_equal(out.numpy(), np.broadcast_to(bias, (1, 4, N)))


def test_the_integer_requantize_floors_as_the_top_byte_does():
    """requantize_kernel with fixed_point's (sh, m): floor(acc a) saturated to int8, as the float top byte computes
    it, for per-channel scales 1e-4 to 1e-2 (the largest m at least 2^30), sums up to +-2^22: equal to the exact
    value but where acc a lies within 1e-6 of an integer."""
    from squeezeedge.lowering.accumulator_bias import fixed_point, requantize_kernel

    rng = np.random.default_rng(8)
    a = 10.0 ** rng.uniform(-4, -2, 64)
    shift, m = fixed_point(a)
    assert m.max() >= 2 ** 30 and 1 <= shift <= 16 and fixed_point(np.full(4, 0.7)) is None
    acc = rng.integers(-(2 ** 22), 2 ** 22, (1, 16, 64)).astype(np.int32)
    lib = tvm.tirx.build(tvm.IRModule({"main": requantize_kernel((1, 16, 64), shift, "main")}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((1, 16, 64), np.int8))
    lib(tvm.runtime.tensor(acc), tvm.runtime.tensor(m.reshape(1, 64)), out)
    exact = acc.astype(np.float64) * a
    want = np.clip(np.floor(exact), -128, 127)
    near = np.abs(exact - np.round(exact)) < 1e-6
    assert np.array_equal(out.numpy()[~near], want[~near]) and want.min() == -128 and want.max() == 127


def test_the_scores_start_at_the_mask():
    """The attention's scores: a * float(sums) + mask, the mask one value a key (narrow_masks' [1, 1, 1, S]),
    as sums started at mask / a (0, or -2^30 for a masked key) and one multiply: the same scores where the
    key is kept, far below every kept one where it is masked."""
    from squeezeedge.lowering.int8 import _te_packed_pair

    rng = np.random.default_rng(6)
    sa, n = (1, 2, 8, 16), 16
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(sa, "int8"))
    w = relax.Var("w", relax.TensorType((1, 2, n // 4, sa[-1] // 4, 4, 4), "int8"))
    mask = relax.Var("mask", relax.TensorType((1, 1, 1, n), "float32"))
    with bb.function("main", [x, w, mask]):
        with bb.dataflow():
            gv = bb.add_func(_te_packed_pair(sa, n, "arm_sdot_pair_t", SDOT), "arm_sdot_pair_t")
            acc = bb.emit(relax.call_tir(gv, [x, w], relax.TensorType((*sa[:-1], n), "int32")))
            y = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), relax.const(np.float32(1.5e-5))))
            out = bb.emit_output(bb.emit(relax.op.add(y, mask)))
        bb.emit_func_output(out)
    mod = bb.get()
    new, count = fold_accumulator_bias(mod)
    assert count == 1 and "_bias" in new["main"].script() and new["main"].script().count("R.add") == 0
    args = (rng.integers(-128, 128, sa).astype(np.int8), rng.integers(-128, 128, (1, 2, n // 4, sa[-1] // 4, 4, 4)).astype(np.int8),
            np.where(np.arange(n) < 11, 0.0, np.finfo(np.float32).min).astype(np.float32).reshape(1, 1, 1, n))
    run = lambda m: relax.VirtualMachine(tvm.compile(relax.get_pipeline("zero")(m), target="llvm"), tvm.cpu())[  # noqa: E731
        "main"](*(tvm.runtime.tensor(v) for v in args)).numpy()
    old, got = run(mod), run(new)
    np.testing.assert_allclose(got[..., :11], old[..., :11], rtol=1e-6)
    assert got[..., 11:].max() < -1e4 and got[..., :11].min() > -1.0
