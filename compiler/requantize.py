"""Requantization: drop round trips (:func:`drop_round_trips`) and fold epilogues (:func:`fold_requantize`).

Round trips: dequantize -> reshape/transpose -> quantize with the same scale and zero point.

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


_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _affine_chain(root, values, uses):
    """(int32 var, a, b) when ``root`` = a * float(var) + b through a chain of single-use adds, subtracts,
    multiplies and divides by constants and one cast to float32 (a kernel's epilogue); else None."""
    steps, cur, casts = [], root, 0
    while isinstance(cur, relax.Var) and isinstance(values.get(cur), relax.Call) and (cur is root or uses.get(cur) == 1):
        call = values[cur]
        if not isinstance(call.op, tvm.ir.Op):
            break
        if call.op.name == "relax.astype" and str(call.attrs.dtype) == "float32" \
                and str(call.args[0].ty.dtype) == "int32":
            casts += 1
        elif call.op.name in _AFFINE and isinstance(call.args[0], relax.Var) \
                and isinstance(call.args[1], tvm.ir.expr.Constant):
            steps.append((call.op.name, call.args[1].value.numpy().astype(np.float64)))
        elif call.op.name in ("relax.add", "relax.multiply") and isinstance(call.args[1], relax.Var) \
                and isinstance(call.args[0], tvm.ir.expr.Constant):
            steps.append((call.op.name, call.args[0].value.numpy().astype(np.float64)))
            cur = call.args[1]
            continue
        else:
            break
        cur = call.args[0]
    if casts != 1 or not steps or not isinstance(cur, relax.Var) or str(cur.ty.dtype) != "int32":
        return None
    a, b = np.float64(1.0), np.float64(0.0)
    for op, c in reversed(steps):  # from the kernel's output forwards
        if op == "relax.add":
            b = b + c
        elif op == "relax.subtract":
            b = b - c
        elif op == "relax.multiply":
            a, b = a * c, b * c
        else:
            a, b = a / c, b / c
    return cur, a, b


def fold_requantize(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """``quantize(a * float(acc) + b, s, z)`` -> ``clip(round(float(acc) * (a/s) + (b/s + z)))`` cast to 8 bits.

    A packed kernel's int32 sums reach the next layer's 8-bit input through a chain of per-channel
    constants: zero-point correction, the s_x * s_w rescale, the bias, then quantize's divide and zero
    point. Folded at compile time the epilogue is one multiply-add and quantize's round and clip (as a
    quantize by 1 with zero point 0), not seven vector ops with a division: int8 SqueezeBERT 30.2 ->
    29.2 ms here (results/PERFORMANCE-LOG.md step 23). The same value in real arithmetic: float32 may
    round a result lying within an ulp of .5 the other way, one step of the 8-bit output. Constant
    operands only (run FoldConstant first). Returns (module, how many quantizes were folded)."""
    from .lookup import _bindings, _qparams_scalar, rebind

    func = mod[func_name]
    values, uses = _bindings(func)
    replace = {}
    for var, value in values.items():
        if not (isinstance(value, relax.Call) and value.op.same_as(_QUANTIZE) and _qparams_scalar(value)
                and isinstance(value.args[0], relax.Var) and str(value.attrs.out_dtype) in ("uint8", "int8")):
            continue
        found = _affine_chain(value.args[0], values, uses)
        if found is None:
            continue
        acc, a, b = found
        s = float(value.args[1].value.numpy().reshape(-1)[0])
        z = float(value.args[2].value.numpy().reshape(-1)[0])
        scale, shift = (np.asarray(a) / s).astype(np.float32), (np.asarray(b) / s + z).astype(np.float32)
        replace[var] = (acc, scale, shift, value)

    def emit(builder, visit, item):
        acc, scale, shift, quantize = item
        x = builder.emit(relax.op.astype(visit(acc), "float32"))
        x = builder.emit(relax.op.multiply(x, relax.const(scale)))
        x = builder.emit(relax.op.add(x, relax.const(shift)))
        # quantize by 1 with zero point 0: its round and clip (relax.op.round lowers to a nearbyint
        # that LLVM does not vectorize along the rows: the attention epilogue ran 20% slower with it)
        s, z = quantize.args[1].value.numpy(), quantize.args[2].value.numpy()
        return builder.emit(relax.op.quantize(x, relax.const(np.ones_like(s)), relax.const(np.zeros_like(z)),
                                              axis=int(quantize.attrs.axis), out_dtype=str(quantize.attrs.out_dtype)))

    return rebind(mod, func_name, replace, emit), len(replace)
