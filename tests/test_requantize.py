"""dequantize -> reshape/transpose -> quantize with the same parameters becomes the layout ops on the
integer tensor (compiler/requantize.py): same bytes out, and nothing else is touched."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.requantize import drop_round_trips


def _module(out_scale: float = 0.02, reuse: bool = False) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((1, 16, 16), "uint8"))
    with bb.function("main", [q]):
        with bb.dataflow():
            x = bb.emit(relax.op.dequantize(q, relax.const(0.02, "float32"), relax.const(9, "uint8"), axis=2))
            r = bb.emit(relax.op.reshape(x, (1, 16, 4, 4)))
            t = bb.emit(relax.op.permute_dims(r, [0, 2, 1, 3]))
            y = bb.emit(relax.op.quantize(t, relax.const(out_scale, "float32"), relax.const(9, "uint8"), axis=3,
                                          out_dtype="uint8"))
            out = bb.emit_output(relax.Tuple([y, r]) if reuse else y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, q):
    out = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(q))
    return out[0].numpy() if isinstance(out, tvm.ir.Array) else out.numpy()


def test_round_trip_becomes_byte_moves_with_the_same_output():
    mod = _module()
    new, n = drop_round_trips(mod)
    script = new["main"].script()
    assert n == 1 and "R.quantize" not in script and "R.dequantize" not in script
    q = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)  # every u8 value once
    np.testing.assert_array_equal(_run(new, q), _run(mod, q))


@pytest.mark.parametrize("kwargs", [{"out_scale": 0.03}, {"reuse": True}])
def test_other_parameters_or_shared_values_are_left_alone(kwargs):
    new, n = drop_round_trips(_module(**kwargs))
    assert n == 0 and "R.dequantize" in new["main"].script()
