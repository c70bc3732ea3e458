"""A packed sdot kernel's bias started in its int32 accumulators (:func:`fold_accumulator_bias`).

After the epilogue folds a layer's output is ``a * float(acc) + b`` (a, b per output channel), or
``quantize(a * float(acc) + b, 1, z)``. NEON's fmla overwrites its addend, so the ``+ b`` costs a register
copy a vector besides the multiply-add (the residual layers' fadd after it one more). Started at
``bias = round(b / a)`` (``round((b + z + 0.5) / a)`` before an 8-bit quantize on aarch64, whose top-byte
convert floors ``v + 0.5``), the sums need no ``+ b``: the epilogue is ``a * float(acc)``, one fmul, where
the accumulators were zeroed (movi) they are now copied from the bias (mov). The value moves by
``b - a * bias``, at most half an accumulator step ``a / 2``: under 1% of an 8-bit output step for
SqueezeBERT's layers (their ``a`` is s_x * s_w, the output step s_x alone or larger). results/PERFORMANCE-LOG.md 52.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.int8 import SDOT, SDOT_ROWS, _te_packed, _te_packed_pair
from squeezeedge.lowering.qdq import QUANTIZE, qparams_scalar, scalar
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings, single_use_call as _call
from squeezeedge.lowering.top_byte_quantize import _kernel as top_byte_kernel

_ADD, _MULTIPLY, _ASTYPE, _CALL_TIR = (tvm.ir.Op.get("relax." + op) for op in ("add", "multiply", "astype", "call_tir"))
LIMIT = 2 ** 24  # the largest bias started in an accumulator: far from int32's limits after any K of s8 products


def _channel_const(expr, shape: tuple[int, ...]) -> np.ndarray | None:
    """A float32 constant broadcast against int32 sums of ``shape`` [..., M, N] that does not vary along M
    (one value per output channel, per head and channel in the attention, or one for all), as [..., N]
    float64; else None."""
    if not isinstance(expr, tvm.ir.expr.Constant) or str(expr.ty.dtype) != "float32":
        return None
    v = expr.value.numpy()
    if v.ndim > len(shape) or (v.ndim >= 2 and v.shape[-2] != 1):
        return None
    try:
        full = np.broadcast_to(v.astype(np.float64), (*shape[:-2], 1, shape[-1]))
    except ValueError:
        return None
    return full.reshape(*shape[:-2], shape[-1])


def _epilogue(var, values, uses):
    """(call_tir of a packed sdot kernel, a, b) when ``var`` = add(multiply(astype(acc, f32), a), b), each
    step read once and acc that kernel's output; else None."""
    add = values.get(var)
    if not (isinstance(add, relax.Call) and add.op.same_as(_ADD)):
        return None
    mul = _call(add.args[0], values, uses, _MULTIPLY)
    cast = None if mul is None else _call(mul.args[0], values, uses, _ASTYPE)
    acc = None if cast is None or str(cast.attrs.dtype) != "float32" else _call(cast.args[0], values, uses, _CALL_TIR)
    if acc is None:
        return None
    gv, args = acc.args[0], list(acc.args[1].fields)
    name = gv.name_hint
    if not name.startswith(SDOT.block + "_") or len(args) != 2 \
            or not ("_pair_" in name or isinstance(args[1], tvm.ir.expr.Constant)):
        return None
    shape = tuple(int(d) for d in acc.ty.shape)
    a, b = _channel_const(mul.args[1], shape), _channel_const(add.args[1], shape)
    if a is None or b is None or np.any(a == 0):
        return None
    return acc, a, b


def _masked_scores(var, values, uses):
    """(the attention scores' pair sdot kernel call, a, mask) when ``var`` = add(multiply(astype(acc, f32), a),
    mask), a a scalar constant and mask a float32 tensor constant along the rows (one value a key: after
    :func:`squeezeedge.lowering.masks.narrow_masks`); else None."""
    add = values.get(var)
    if not (isinstance(add, relax.Call) and add.op.same_as(_ADD) and isinstance(add.args[1], relax.Var)):
        return None
    mul = _call(add.args[0], values, uses, _MULTIPLY)
    cast = None if mul is None else _call(mul.args[0], values, uses, _ASTYPE)
    acc = None if cast is None else _call(cast.args[0], values, uses, _CALL_TIR)
    mask = add.args[1]
    if acc is None or not acc.args[0].name_hint.startswith(SDOT.block + "_pair_") or str(mask.ty.dtype) != "float32" \
            or not isinstance(mul.args[1], tvm.ir.expr.Constant) or mul.args[1].value.numpy().size != 1 \
            or mask.ty.ndim != acc.ty.ndim or int(mask.ty.shape[-2]) != 1:
        return None
    a = float(mul.args[1].value.numpy().reshape(-1)[0])
    return (acc, a, mask) if a > 0 else None


def _offset_after(a: np.ndarray, offset: np.ndarray, bias: np.ndarray, shift: int) -> np.ndarray | None:
    """round(offset 2^shift) as int32, the + b + z + 0.5 added after the fixed-point multiply, where that is
    nearer the exact value than the accumulators' start ``bias`` (round(offset / a), off by up to a / 2 of an
    output step: the attention's P V has a ~ 0.02); else None."""
    exact = offset * 2.0 ** shift
    if np.max(np.abs(np.round(exact) - exact)) * 2.0 ** -shift < np.max(np.abs(bias * a - offset)):
        return np.round(exact).astype(np.int32)
    return None


def _mask_start(builder, mask, mask_var, a: float, acc):
    """The scores' sums' start from the mask at run time: round(mask / a) clipped to +-2^30 (a masked key's
    -inf: -2^30, past any sum), one value a key broadcast over the heads ([..., N] of the pair kernel)."""
    shape = [int(d) for d in acc.ty.shape]
    start = builder.emit(relax.op.round(relax.op.clip(relax.op.multiply(mask, relax.const(np.float32(1 / a))),
                                                      -2.0 ** 30, 2.0 ** 30)))
    start = builder.emit(relax.op.astype(start, "int32"))
    start = builder.emit(relax.op.reshape(start, [*[int(d) for d in list(mask_var.ty.shape)[:-2]], shape[-1]]))
    return builder.emit(relax.op.broadcast_to(start, [*shape[:-2], shape[-1]]))


def fixed_point(a: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(sh, m): each per-channel scale a as m / 2^(31 + sh), m int32 below 2^31 (the largest a's m at least
    2^30: 30 significant bits or more where float32 had 24), sh the most in 1..16 that allows it; None where a
    scale is 1/2 or more (no shift left) or not positive."""
    if np.any(a <= 0) or a.max() >= 0.5:
        return None
    shift = min(16, int(np.floor(-np.log2(a.max()))))
    while a.max() * 2.0 ** shift >= 1.0:
        shift -= 1
    m = np.round(a * 2.0 ** (31 + shift))
    return (shift, m.astype(np.int32)) if shift >= 1 and m.max() < 2 ** 31 else None


def requantize_kernel(shape, shift: int, name: str, offset: bool = False) -> tvm.tirx.PrimFunc:
    """acc int32 [shape], m int32 [N] -> int8: ``(acc m) >> (31 + shift)`` saturated, written so that LLVM
    selects sqdmulh (the doubling high half), sqshrn #shift into int16 and sqxtn: 5 instructions for 8 values
    (+ the store) where the float top byte took 8 (scvtf, fmul, fcvtzs #24 twice each, uzp2, shrn). The
    accumulators start at round((b + z + 0.5) / a) as for the top byte: both floor acc a + b + z + 0.5. With
    ``offset`` an int32 [..., N] input, round((b + z + 0.5) 2^shift), is added before the shift instead (one
    add for 4 values; exact for the attention's b = z = 0)."""
    from tvm import te, tirx

    from squeezeedge.lowering.top_byte_quantize import i64

    acc = te.placeholder(i64(shape), "int32", name="acc")
    m = te.placeholder(i64((*shape[:-2], shape[-1])), "int32", name="m")  # per output (and head), not row
    add = te.placeholder(i64((*shape[:-2], shape[-1])), "int32", name="offset") if offset else None
    c = tirx.const

    def one(*i):
        high = (acc[i].astype("int64") * m[(*i[:-2], i[-1])].astype("int64")) >> c(31, "int64")
        high = tirx.max(tirx.min(high, c(2 ** 31 - 1, "int64")), c(-2 ** 31, "int64")).astype("int32")
        if add is not None:
            high = high + add[(*i[:-2], i[-1])]
        half = tirx.max(tirx.min(high >> c(shift, "int32"), c(32767, "int32")), c(-32768, "int32")).astype("int16")
        return tirx.max(tirx.min(half, c(127, "int16")), c(-128, "int16")).astype("int8")

    out = te.compute(i64(shape), one, name="requantized")
    return te.create_prim_func([acc, m, *([add] if offset else []), out]).with_attr("global_symbol", name)


class _Kernels:
    """The PrimFuncs fold_accumulator_bias adds, each made once: packed kernels started at a bias, the top-byte
    and integer requantizes. ``kernels`` (name -> PrimFunc) is what rewrite_bindings adds to the module."""

    def __init__(self, kernels: dict):
        self.kernels, self.made = kernels, {}

    def _once(self, name: str, make) -> str:
        if name not in self.made:
            self.made[name] = self.kernels[name] = make()
        return name

    def packed(self, acc) -> str:
        gv, (x, w) = acc.args[0], list(acc.args[1].fields)
        name, shape, n = gv.name_hint + "_bias", tuple(int(d) for d in x.ty.shape), int(acc.ty.shape[-1])
        if "_pair_" in name:  # the attention's matmuls: b packed at run time
            return self._once(name, lambda: _te_packed_pair(shape, n, name, SDOT, bias=True))
        spec = SDOT_ROWS if name.startswith(SDOT_ROWS.block + "_") else SDOT
        return self._once(name, lambda: _te_packed(shape, n, int(w.ty.shape[0]), name, spec, bias=True))

    def top_byte(self, shape, out) -> str:
        name = "accumulator_top_byte_" + "x".join(map(str, shape)) + "_" + out
        return self._once(name, lambda: top_byte_kernel(shape, out, (*shape[:-2], 1, shape[-1]), 0.0, name))

    def requantize(self, shape, shift: int, offset: bool = False) -> str:
        name = f"accumulator_requantize_{'x'.join(map(str, shape))}_{shift}{'_offset' if offset else ''}"
        return self._once(name, lambda: requantize_kernel(shape, shift, name, offset))


def fold_accumulator_bias(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Every ``a * float(acc) + b`` after a packed sdot kernel (acc read there alone) as
    ``a * float(acc')``, acc' the kernel started at round(b / a); ``quantize(a * float(acc) + b, 1, z)`` as
    the top byte of ``a * float(acc')``, acc' started at round((b + z + 0.5) / a). Returns (module, how
    many kernels now start at a bias)."""
    kernels, gvs = {}, {}
    make = _Kernels(kernels)
    packed_kernel, top_byte, integer_requantize = make.packed, make.top_byte, make.requantize
    quantized = set()  # vars an 8-bit quantize of scale 1 reads (that quantize's match takes them whole)

    def match(var, value, vals, uses):
        if not quantized:
            quantized.update(v.args[0] for v in vals.values() if isinstance(v, relax.Call) and v.op.same_as(QUANTIZE))
            quantized.add(None)
        if isinstance(value, relax.Call) and value.op.same_as(QUANTIZE) and qparams_scalar(value) \
                and scalar(value.args[1]) == 1.0 and str(value.attrs.out_dtype) in ("int8", "uint8") \
                and uses.get(value.args[0]) == 1:
            found = _epilogue(value.args[0], vals, uses)
            if found is None:
                return None
            acc, a, b = found
            bias = np.round((b + scalar(value.args[2]) + 0.5) / a)
            if np.abs(bias).max() >= LIMIT:
                return None
            shape, out = tuple(int(d) for d in acc.ty.shape), str(value.attrs.out_dtype)
            fixed = fixed_point(a) if out == "int8" else None
            if fixed is not None:  # the 8-bit value from the int32 sums in integer instructions
                shift, m = fixed
                offset = _offset_after(a, b + scalar(value.args[2]) + 0.5, bias, shift)
                if offset is not None:
                    return None, acc, (m, offset), None, integer_requantize(shape, shift, True)
                return packed_kernel(acc), acc, m, bias, integer_requantize(shape, shift)
            return packed_kernel(acc), acc, a, bias, top_byte(shape, out)
        if var in quantized:
            return None
        masked = _masked_scores(var, vals, uses)
        if masked is not None:  # the scores start at mask / a: no mask load and add an element
            acc, a, mask = masked
            return packed_kernel(acc), acc, np.float64(a), mask, None
        found = _epilogue(var, vals, uses)
        if found is None:
            return None
        acc, a, b = found
        bias = np.round(b / a)
        if np.abs(bias).max() >= LIMIT:
            return None
        return packed_kernel(acc), acc, a, bias, None

    def emit(builder, visit, item):
        kernel, acc, a, bias, top = item
        if kernel is None:  # the sums as they were, the offset added in the requantize
            m, offset = a
            return builder.emit(relax.call_tir(gvs[top], [visit(acc), relax.const(m), relax.const(offset)],
                                               relax.TensorType(acc.ty.shape, "int8")))
        x, w = (visit(arg) for arg in acc.args[1].fields)
        pair = "_pair_" in kernel  # bias [..., N] per head; a weight layer's [N]
        if isinstance(bias, relax.Var):  # the scores' mask at run time, in accumulator steps (-inf: -2^30)
            out = builder.emit(relax.call_tir(gvs[kernel], [x, w, _mask_start(builder, visit(bias), bias, a, acc)],
                                              acc.ty))
            return builder.emit(relax.op.multiply(builder.emit(relax.op.astype(out, "float32")),
                                                  relax.const(np.float32(a))))
        bias = bias.astype(np.int32) if pair else bias.reshape(-1).astype(np.int32)
        start = builder.emit(relax.call_tir(gvs[kernel], [x, w, relax.const(bias)], acc.ty))
        if top is not None and top.startswith("accumulator_requantize_"):
            return builder.emit(relax.call_tir(gvs[top], [start, relax.const(a)], relax.TensorType(acc.ty.shape, "int8")))
        y = builder.emit(relax.op.astype(start, "float32"))
        scale = relax.const(a[..., None, :].astype(np.float32))  # [..., 1, N]: constant along the rows
        if top is None:
            return builder.emit(relax.op.multiply(y, scale))
        return builder.emit(relax.call_tir(gvs[top], [y, scale], relax.TensorType(acc.ty.shape,
                                                                                    top.rsplit("_", 1)[1])))

    return rewrite_bindings(mod, match, emit, func_name, kernels, gvs)


AccumulatorBias = counted_pass("AccumulatorBias", "accumulator_biases")(fold_accumulator_bias)
