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


def legalize_quantize_saturating(bb, call):
    """relax.quantize with scalar constant parameters into 8 bits as aarch64 does it best: round, convert
    to int32 saturating (llvm.fptosi.sat: fcvtzs), then saturating narrows (sqxtn / sqxtun) in place of
    TVM's clamp in float (fminnm, fmaxnm) and plain narrows: 7 instructions for 8 values, not 10. Anything
    else, and any x86 target (where LLVM scalarizes fptosi.sat), keeps TVM's own legalization."""
    from tvm import te, tirx
    from tvm.relax.transform.legalize_ops.qdq import _quantize

    out = str(call.attrs.out_dtype)
    if out not in ("int8", "uint8") or not qparams_scalar(call):
        return _quantize(bb, call)
    s, z = scalar(call.args[1]), scalar(call.args[2])
    lo, hi = (-128, 127) if out == "int8" else (0, 255)

    def clamp(v, a, b, dtype):
        return te.max(te.min(v, tirx.const(b, dtype)), tirx.const(a, dtype))

    def compute(x):
        def one(*i):
            v = te.round(x[i] if s == 1.0 else x[i] / tirx.const(s, "float32")) + tirx.const(z, "float32")
            v = tirx.call_llvm_pure_intrin("int32", "llvm.fptosi.sat", v)
            return clamp(clamp(v, -32768, 32767, "int32").astype("int16"), lo, hi, "int16").astype(out)
        return te.compute(x.shape, one, name="quantized")

    return bb.call_te(compute, call.args[0], primfunc_name_hint="quantize")
