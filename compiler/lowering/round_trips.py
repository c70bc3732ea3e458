"""Requantization round trips dropped: dequantize -> reshape/transpose -> quantize with the same scale and
zero point, or dequantize -> quantize alone (where :mod:`squeezeedge.lowering.transposes` moved the layout
ops before the dequantize).

onnxruntime's QDQ quantizer puts a QuantizeLinear/DequantizeLinear pair around every reshape and
transpose with the parameters of the tensor they move, so SqueezeBERT's Q, K, V and attention outputs
go u8 -> float -> (heads reshaped, transposed) -> u8. With one scalar scale and zero point on both
sides, ``quantize(layout(dequantize(q, s, z)), s, z)`` is ``layout(q)`` exactly (s * (q - z) / s rounds
back to q - z), so the data moves as bytes and the kernels before it write u8, not float.
"""

from __future__ import annotations

import tvm
from tvm import relax

from squeezeedge.lowering.qdq import DEQUANTIZE, QUANTIZE, same_qparams
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings

LAYOUT = ("relax.reshape", "relax.permute_dims")


def drop_round_trips(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Replace each such round trip by the layout ops on the integer tensor. Returns (module, count)."""
    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(QUANTIZE)):
            return None
        chain, cur = [], value.args[0]
        while isinstance(cur, relax.Var) and uses.get(cur, 0) == 1 and isinstance(values.get(cur), relax.Call) \
                and isinstance(values[cur].op, tvm.ir.Op) and values[cur].op.name in LAYOUT:
            chain.append(values[cur])
            cur = values[cur].args[0]
        dq = values.get(cur) if isinstance(cur, relax.Var) else None
        if not (isinstance(dq, relax.Call) and dq.op.same_as(DEQUANTIZE)) \
                or str(dq.args[0].ty.dtype) != str(value.attrs.out_dtype) or not same_qparams(dq, value):
            return None
        return dq.args[0], chain[::-1]

    def emit(builder, visit, item):
        q, chain = item
        x = visit(q)
        for call in chain:
            x = builder.emit(relax.Call(call.op, [x, *call.args[1:]], call.attrs))
        return x

    return rewrite_bindings(mod, match, emit, func_name)


DropRoundTrips = counted_pass("DropRoundTrips", "round_trips_dropped")(drop_round_trips)
