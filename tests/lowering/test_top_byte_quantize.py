"""compiler/lowering/top_byte_quantize.py: aarch64's 8-bit quantize as the top byte of a saturating
fixed-point convert gives TVM's own quantize's values but at exact ties (up, not to even), far out of
range included; a constant add or a layer norm's beta before it takes the + 0.5; the code has no round
and no float clamp."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.top_byte_quantize import top_byte_quantizes

A76 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})


def _module(dtype: str, scale: float, zero: int, before: str | None = None, x_dtype: str = "float32"):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((32, 64), x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            v = x
            if before == "add":  # a folded epilogue's x * a + b
                v = bb.emit(relax.op.multiply(x, relax.const(np.linspace(0.5, 2, 64, dtype="float32"))))
                v = bb.emit(relax.op.add(v, relax.const(np.linspace(-3, 3, 64, dtype="float32"))))
            elif before == "multiply":  # SmoothQuant's per-channel multiply after a layer norm
                v = bb.emit(relax.op.multiply(x, relax.const(np.linspace(0.5, 2, 64, dtype="float32"))))
            elif before == "layer_norm":
                g, b = np.full(64, 60, "float32"), np.linspace(-3, 3, 64, dtype="float32")
                v = bb.emit(relax.op.nn.layer_norm(x, relax.const(g), relax.const(b), axes=[-1]))
            q = bb.emit(relax.op.quantize(v, relax.const(np.dtype(x_dtype).type(scale)), relax.const(np.array(zero, dtype)),
                                          axis=-1, out_dtype=dtype))
            out = bb.emit_output(q)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, x):
    ex = tvm.compile(relax.get_pipeline("zero")(mod), target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy().astype(int)


@pytest.mark.parametrize("dtype, scale, zero", [("int8", 1.0, 0), ("int8", 0.05, -7), ("uint8", 0.5, 128)])
def test_top_byte_quantize_equals_tvms_but_at_ties(dtype, scale, zero):
    """Away from ties (quarter steps) and far out of range the same values; at exact ties (x / s exact in
    float32: scales 1 and 0.5) up; within float32's rounding of a tie (scale 0.05) one step at most."""
    quarter, half = np.arange(-250, 250) + 0.25, np.arange(-250, 250) + 0.5
    x = np.concatenate([np.concatenate([quarter, quarter + 0.5]) * scale, half * scale,
                        [3e9, -3e9, 1e30, -1e30] * 137])
    x = x.astype("float32").reshape(32, 64)
    mod = _module(dtype, scale, zero)
    ours, n = top_byte_quantizes(mod)
    assert n == 1 and "R.quantize" not in ours.script()
    got, want = _run(ours, x).reshape(-1), _run(mod, x).reshape(-1)
    tie = np.zeros(got.size, bool)
    tie[1000:1500] = True
    np.testing.assert_array_equal(got[~tie], want[~tie])
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    if scale != 0.05:
        assert np.array_equal(got[tie], np.clip(np.floor(half + 0.5) + zero, lo, hi))
    assert np.abs(got[tie] - want[tie]).max() <= 1


@pytest.mark.parametrize("dtype, zero", [("int8", -7), ("uint8", 128)])
def test_a_float16_input_takes_a_16_bit_convert_and_gives_the_same_values(dtype, zero):
    """float16 values (the A76's GELU epilogue): the top byte of fptosi.sat(v * 2^8), the same values as
    floor(x + z + 0.5) clamped, quarter steps and far out of range (inf included) alike."""
    quarter = np.arange(-250, 250) + 0.25
    x = np.concatenate([quarter, quarter + 0.5, [60000, -60000, np.inf, -np.inf] * 262]).astype("float16")
    x = x.reshape(32, 64)
    ours, n = top_byte_quantizes(_module(dtype, 1.0, zero, x_dtype="float16"))
    assert n == 1 and "R.quantize" not in ours.script()
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    want = np.clip(np.floor(x.astype(np.float64) + zero + 0.5), lo, hi)
    assert np.array_equal(_run(ours, x), want)


@pytest.mark.parametrize("before, scale", [("add", 1.0), ("layer_norm", 1.0), ("multiply", 0.4)])
def test_a_constant_before_the_quantize_takes_the_half_or_the_scale(before, scale):
    """An add's constant (or beta) becomes c + z + 0.5 and the kernel adds nothing more; a multiply's
    becomes m / s and the kernel divides by nothing: the same values as TVM's quantize on random inputs
    (no ties there)."""
    mod = _module("int8", scale, 3, before)
    ours, n = top_byte_quantizes(mod)
    script = ours.script()
    assert n == 1 and "R.quantize" not in script and "R.add" not in script
    assert script.count("R.nn.layer_norm") == (before == "layer_norm")
    if before == "multiply":
        assert "R.multiply" not in script and " / " not in script.split("def main")[0]
    x = np.random.default_rng(0).normal(0, 60, (32, 64)).astype("float32")
    got, want = _run(ours, x), _run(mod, x)
    assert np.array_equal(got, want) and want.min() == -128 and want.max() == 127


def test_the_a76_code_converts_fixed_point_and_does_not_round_or_clamp_in_float():
    ours, _ = top_byte_quantizes(_module("int8", 1.0, 0))
    asm = tvm.compile(relax.transform.LegalizeOps()(ours), target=A76).mod.imports[0].inspect_source("asm")
    assert re.search(r"\tfcvtzs\tv\d+\.4s, v\d+\.4s, #24", asm)
    assert "\tfminnm" not in asm and "\tfrint" not in asm and "\tsmax" not in asm
