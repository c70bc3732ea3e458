"""Reading and writing relax.quantize / relax.dequantize calls: what the lowering's rewrites share."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

QUANTIZE, DEQUANTIZE = tvm.ir.Op.get("relax.quantize"), tvm.ir.Op.get("relax.dequantize")


def scalar_const(expr) -> bool:
    return isinstance(expr, tvm.ir.expr.Constant) and int(np.prod(expr.value.numpy().shape)) == 1


def qparams_scalar(call) -> bool:
    return scalar_const(call.args[1]) and scalar_const(call.args[2])


def scalar(expr) -> float:
    """The value of a one-element constant (a scale, a zero point)."""
    return float(expr.value.numpy().reshape(-1)[0])


def quantize_of_var(value) -> bool:
    """``value`` is a quantize with scalar constant parameters of a bound variable."""
    return isinstance(value, relax.Call) and value.op.same_as(QUANTIZE) and qparams_scalar(value) \
        and isinstance(value.args[0], relax.Var)


def quantize_by_one(builder, x, quantize):
    """``quantize``'s round and clip alone (scale 1, zero point 0) on an ``x`` that already carries its
    scale and zero point."""
    s, z = quantize.args[1].value.numpy(), quantize.args[2].value.numpy()
    return builder.emit(relax.op.quantize(x, relax.const(np.ones_like(s)), relax.const(np.zeros_like(z)),
                                          axis=int(quantize.attrs.axis), out_dtype=str(quantize.attrs.out_dtype)))


def same_qparams(a, b) -> bool:
    return all(scalar_const(x) and scalar_const(y) and np.array_equal(x.value.numpy().reshape(-1),
                                                                        y.value.numpy().reshape(-1))
               for x, y in ((a.args[1], b.args[1]), (a.args[2], b.args[2])))

