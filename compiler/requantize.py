"""Drop dequantize -> reshape/transpose -> quantize round trips with the same scale and zero point.

onnxruntime's QDQ quantizer puts a QuantizeLinear/DequantizeLinear pair around every reshape and
transpose with the parameters of the tensor they move, so SqueezeBERT's Q, K, V and attention outputs
go u8 -> float -> (heads reshaped, transposed) -> u8. With one scalar scale and zero point on both
sides, ``quantize(layout(dequantize(q, s, z)), s, z)`` is ``layout(q)`` exactly (s * (q - z) / s rounds
back to q - z), so the data moves as bytes and the kernels before it write u8, not float.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .lookup import _bindings, _scalar_const, rebind

LAYOUT = ("relax.reshape", "relax.permute_dims")
_QUANTIZE, _DEQUANTIZE = tvm.ir.Op.get("relax.quantize"), tvm.ir.Op.get("relax.dequantize")


def _same_qparams(a, b) -> bool:
    return all(_scalar_const(x) and _scalar_const(y) and np.array_equal(x.value.numpy().reshape(-1),
                                                                        y.value.numpy().reshape(-1))
               for x, y in ((a.args[1], b.args[1]), (a.args[2], b.args[2])))


def drop_round_trips(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Replace each such round trip by the layout ops on the integer tensor. Returns (module, count)."""
    func = mod[func_name]
    values, uses = _bindings(func)
    replace = {}
    for var, value in values.items():
        if not (isinstance(value, relax.Call) and value.op.same_as(_QUANTIZE)):
            continue
        chain, cur = [], value.args[0]
        while isinstance(cur, relax.Var) and uses.get(cur, 0) == 1 and isinstance(values.get(cur), relax.Call) \
                and isinstance(values[cur].op, tvm.ir.Op) and values[cur].op.name in LAYOUT:
            chain.append(values[cur])
            cur = values[cur].args[0]
        dq = values.get(cur) if isinstance(cur, relax.Var) else None
        if not chain or not (isinstance(dq, relax.Call) and dq.op.same_as(_DEQUANTIZE)) \
                or str(dq.args[0].ty.dtype) != str(value.attrs.out_dtype) or not _same_qparams(dq, value):
            continue
        replace[var] = (dq.args[0], chain[::-1])
    def emit(builder, visit, item):
        q, chain = item
        x = visit(q)
        for call in chain:
            x = builder.emit(relax.Call(call.op, [x, *call.args[1:]], call.attrs))
        return x

    return rebind(mod, func_name, replace, emit), len(replace)
