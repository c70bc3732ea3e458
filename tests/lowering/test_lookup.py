"""Lookup tables for elementwise functions between dequantize and quantize (compiler/lowering/lookup.py): the
table gives exactly what the float chain gives, for every 8-bit input; anything else is left alone."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.lookup import lookup_tables


def _gelu_module(in_dtype: str, bias_shape=(), reuse: bool = False) -> tvm.IRModule:
    """q [16, 16] -> dequantize -> x * 0.5 * (1 + erf(x / sqrt 2)) (+ bias) -> quantize u8, as TVM's ONNX
    importer writes a QDQ GELU."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((16, 16), in_dtype))
    zp_in = 0 if in_dtype == "int8" else 7
    with bb.function("main", [q]):
        with bb.dataflow():
            x = bb.emit(relax.op.dequantize(q, relax.const(0.031, "float32"), relax.const(zp_in, in_dtype),
                                            axis=1, out_dtype="float32"))
            e = bb.emit(relax.op.erf(bb.emit(relax.op.divide(x, relax.const(1.4142135, "float32")))))
            h = bb.emit(relax.op.multiply(relax.const(0.5, "float32"), bb.emit(relax.op.add(e, relax.const(1.0)))))
            g = bb.emit(relax.op.multiply(x, h))
            if bias_shape != ():
                bias = np.linspace(-1, 1, 16).astype("float32").reshape(bias_shape)
                g = bb.emit(relax.op.add(g, relax.const(bias)))
            y = bb.emit(relax.op.quantize(g, relax.const(0.013, "float32"), relax.const(3, "uint8"), axis=1,
                                          out_dtype="uint8"))
            out = bb.emit_output(relax.Tuple([y, e]) if reuse else y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, q):
    return relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(q)).numpy()


@pytest.mark.parametrize("in_dtype", ["uint8", "int8"])
def test_gelu_becomes_a_table_with_identical_outputs(in_dtype):
    mod = _gelu_module(in_dtype)
    new, n = lookup_tables(mod)
    assert n == 1
    script = new["main"].script()
    assert "R.erf" not in script and "R.take" in script
    lo = -128 if in_dtype == "int8" else 0
    q = np.arange(lo, lo + 256).astype(in_dtype).reshape(16, 16)  # every 8-bit value once
    np.testing.assert_array_equal(_run(new, q), _run(mod, q))


@pytest.mark.parametrize("kwargs", [{"bias_shape": (1, 16)}, {"reuse": True}])
def test_per_channel_constants_and_shared_intermediates_are_left_alone(kwargs):
    """A per-channel bias makes the output depend on the position, not only the 8-bit value; an
    intermediate needed elsewhere must be computed anyway."""
    mod = _gelu_module("uint8", **kwargs)
    new, n = lookup_tables(mod)
    assert n == 0 and "R.erf" in new["main"].script()
