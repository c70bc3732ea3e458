"""A kernel's GELU epilogue folded into the quantize after it (:func:`fold_gelu_quantize`).

The trained-model recipe leaves the first FFN layer's int32 sums to a float epilogue, the exported
GELU (``x * 0.5 * (1 + erf(x / sqrt(2)))``) and the next layer's quantize:

    x = a * float(acc) + b;  q = quantize(m * (x * (0.5 * (1 + erf(x / c)))), s, z)

With y = x / c that is ``round((y + y * erf(y)) * (0.5 * c * m / s) + z)``: y is one multiply-add from the
sums (a / c and b / c folded at compile time), ``y + y * erf(y)`` one more (LLVM contracts it to one
fmla / vfmadd), and the divide by c, the add of 1, the multiplies by 0.5, x and m and quantize's divide
by s become one multiply. The same value in real arithmetic: float32 may round an 8-bit tie the other way.

erf itself is a (2, 2) rational in y^2 on y clamped to [-2.5, 2.5] (:data:`INT8_ERF`, within 2.1e-4 of erf
everywhere: about 0.01 of an 8-bit output step at GELU's largest outputs), 3 multiply-adds and 2 multiplies
summed in powers of y^2, where TVM's fast_erf (9 multiply-adds, to 4) was a third of the kernel's epilogue
on the boards' cores (the (2, 3) one before, within 6.5e-5, took a multiply, a multiply-add and a constant
register more a vector: results/PERFORMANCE-LOG.md 51). Float GELU's erf (:func:`rational_erfs`) is the (3, 3)
one, within 5e-6.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.qdq import quantize_by_one, quantize_of_var, scalar
from squeezeedge.lowering.requantize import affine_chain
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings, rewrite_functions, single_use_call

_ERF, _MUL, _ADD, _DIV = (tvm.ir.Op.get("relax." + op) for op in ("erf", "multiply", "add", "divide"))


# erf(y) ~= y * P(y^2) / Q(y^2) for |y| <= clamp: least-squares fits minimising the largest error on
# [0, clamp], coefficients lowest power first. (3, 3), for float GELU: within 5e-6 of erf everywhere
# (erf(3.2) = 1 - 6e-6)
ERF_CLAMP = 3.2
ERF_P = (1.1283811330795288, 0.1536232829093933, 0.0433727502822876, 0.000759333313908428)
ERF_Q = (1.0, 0.46952515840530396, 0.0947762206196785, 0.009370459243655205)
# (2, 2), for GELU folded into an 8-bit quantize: within 2.1e-4 of erf everywhere (erf(2.5) = 1 - 4.1e-4;
# minimax on [0, 6] with the clamp), GELU's output within about 0.01 of an 8-bit step; Q is monic, so
# t^2 + q0 + q1 t: no t^3, two multiply-adds and two constants a vector fewer than the float one
ERF8_CLAMP = 2.5
ERF8_P = (5.4853315353393555, 2.5372822284698486, 0.1484125256538391)
ERF8_Q = (4.867077350616455, 3.829761028289795, 1.0)


def _form(clamp, p, q):
    """(clamp, P, Q) as emitted: both divided by Q's leading coefficient and summed in powers of t = y^2 (t,
    t^2, t^3 shared; every coefficient is positive, so no term cancels): each multiply-add's addend is the
    running sum, not a constant (on NEON, where fmla overwrites its addend, a constant addend costs a
    register copy), and Q's t^3 term needs no multiply."""
    return clamp, *(tuple(float(np.float32(c / q[-1])) for c in cs) for cs in (p, q))


FLOAT_ERF, INT8_ERF = _form(ERF_CLAMP, ERF_P, ERF_Q), _form(ERF8_CLAMP, ERF8_P, ERF8_Q)


def _ratio(t, t2, t3, mul, add, const, p, q):
    """(P(t), Q(t)) as ((p0 + p1 t) + p2 t^2) [+ p3 t^3] and ((t^n + q0) + q1 t) [+ q2 t^2], Q monic of degree
    n = 2 or 3 (``t3()`` gives t^3, computed only where a term needs it)."""
    powers = (t, t2, t3()) if len(p) > 3 or len(q) > 3 else (t, t2)
    num = add(mul(t, const(p[1])), const(p[0]))
    for power, c in zip(powers[1:], p[2:]):
        num = add(num, mul(power, const(c)))
    den = add(add(powers[len(q) - 2], const(q[0])), mul(t, const(q[1])))
    for power, c in zip(powers[1:], q[2:-1]):
        den = add(den, mul(power, const(c)))
    return num, den


def erf_rational(y: np.ndarray, form=FLOAT_ERF) -> np.ndarray:
    """The emitted erf in numpy float32, the same operations in the same order (for tests)."""
    clamp, p, q = form
    y = np.clip(np.asarray(y, np.float32), np.float32(-clamp), np.float32(clamp))
    t = y * y
    t2 = t * t
    num, den = _ratio(t, t2, lambda: t2 * t, np.multiply, np.add, np.float32, p, q)
    return y * num / den


def _emit_erf(builder, y, form=FLOAT_ERF, dtype: str = "float32"):
    """:func:`erf_rational` as Relax ops (elementwise: they fuse into the kernel's epilogue), in ``dtype``."""
    clamp, p, q = form

    def const(c):
        return relax.const(np.dtype(dtype).type(c))

    def mul(a, b):
        return builder.emit(relax.op.multiply(a, b))

    def add(a, b):
        return builder.emit(relax.op.add(a, b))

    yc = builder.emit(relax.op.clip(y, -clamp, clamp))
    t = mul(yc, yc)
    t2 = mul(t, t)
    num, den = _ratio(t, t2, lambda: mul(t2, t), mul, add, const, p, q)
    return builder.emit(relax.op.divide(mul(yc, num), den))


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy().astype(np.float64) if isinstance(expr, tvm.ir.expr.Constant) else None


def _call(var, values, uses, op, single: bool = True):
    """The call ``op`` bound to ``var`` (read only once when ``single``), or None."""
    value = values.get(var) if isinstance(var, relax.Var) else None
    if isinstance(value, relax.Call) and value.op.same_as(op) and (not single or uses.get(var) == 1):
        return value
    return None


def _factors(var, values, uses, consts: list, others: list) -> None:
    """Split a tree of single-use multiplies into its constant and its non-constant factors."""
    call = _call(var, values, uses, _MUL)
    if call is None:
        others.append(var)
        return
    for arg in call.args:
        c = _const(arg)
        if c is not None:
            consts.append(c)
        elif isinstance(arg, relax.Var):
            _factors(arg, values, uses, consts, others)
        else:
            others.append(arg)


def _erf_input(var, values, uses):
    """(x, c) when ``var`` = 1 + erf(x / c) (or erf(x * (1 / c))) with scalar c, each step read once; else None."""
    add = _call(var, values, uses, _ADD)
    if add is None:
        return None
    consts = [_const(arg) for arg in add.args]
    one = [i for i, c in enumerate(consts) if c is not None and np.all(c == 1.0)]
    erf = _call(add.args[1 - one[0]], values, uses, _ERF) if len(one) == 1 else None
    if erf is None:
        return None
    for op, invert in ((_DIV, False), (_MUL, True)):
        scaled = _call(erf.args[0], values, uses, op)
        if scaled is not None and isinstance(scaled.args[0], relax.Var):
            c = _const(scaled.args[1])
            if c is not None and c.size == 1 and float(c.reshape(-1)[0]) != 0.0:
                c = float(c.reshape(-1)[0])
                return scaled.args[0], 1.0 / c if invert else c
    return None


def _scaled_form(form=INT8_ERF):
    """(lam, clamp, (n0, n1), (d0, d1)): ``form``'s (2, 2) rational on w = lam y, lam its P's t^2 coefficient,
    where both P and Q are monic: erf(y) = w N(s) / D(s), s = w^2 clamped as w at lam * clamp, N = s^2 + n1 s
    + n0, D = s^2 + d1 s + d0. Each is one add and one multiply-add from s and s^2 (a constant addend would
    cost a register copy on NEON: fmla overwrites its addend)."""
    clamp, p, q = form
    lam = p[2]
    return lam, clamp * lam, (p[0] * lam ** 3, p[1] * lam), (q[0] * lam ** 4, q[1] * lam ** 2)


def nearest_byte(v, out_dtype: str, neon: bool):
    """The 8-bit round(v) (ties to even, as quantize rounds), saturated, of a float16 TIR value: on NEON one
    fcvtns (fcvtnu) and one sqxtn (uqxtn) for 8 values; elsewhere round, clamp, cast (the same values)."""
    from tvm import tirx

    lo, hi = (-128, 127) if out_dtype == "int8" else (0, 255)
    if not neon:
        r = tirx.round(v)
        return tirx.max(tirx.min(r, tirx.const(hi, "float16")), tirx.const(lo, "float16")).astype(out_dtype)
    wide = "int16" if out_dtype == "int8" else "uint16"
    w = tirx.call_llvm_pure_intrin(wide, "llvm.aarch64.neon.fcvtn" + ("s" if out_dtype == "int8" else "u"), v)
    w = tirx.min(w, tirx.const(hi, wide))
    return (tirx.max(w, tirx.const(lo, wide)) if out_dtype == "int8" else w).astype(out_dtype)


def gelu_quantize_half(shape, k_shape, out_dtype: str, zero: float, name: str, neon: bool) -> tvm.tirx.PrimFunc:
    """w [shape] float16 (GELU's input times lam, :func:`_scaled_form`), k [k_shape] (broadcast against it) ->
    round(k (w + w erf) + zero) in ``out_dtype``: one elementwise kernel (it fuses into the matmul before it
    as its epilogue), 8 float16 lanes a vector on the A76. With ``neon`` s^2 sits behind llvm.arithmetic.fence
    (no instruction): without it LLVM folded s^2 + n0 into a multiply-add with a copied constant addend (the
    monic form's gain gone); and the output is :func:`nearest_byte`'s two instructions, no + 0.5."""
    from tvm import te, tirx

    from squeezeedge.lowering.top_byte_quantize import at, i64

    lam, clamp, (n0, n1), (d0, d1) = _scaled_form()
    h = lambda c: tirx.const(float(np.float16(c)), "float16")  # noqa: E731
    w = te.placeholder(i64(shape), "float16", name="w")
    k = te.placeholder(i64(k_shape), "float16", name="k")

    def one(*i):
        x = w[i]
        wc = te.min(te.max(x, h(-clamp)), h(clamp))
        s = wc * wc
        s2 = tirx.call_llvm_pure_intrin("float16", "llvm.arithmetic.fence", s * s) if neon else s * s
        num, den = (s2 + h(n0)) + s * h(n1), (s2 + h(d0)) + s * h(d1)
        v = (x + x * (wc * num / den)) * at(k, i)
        return nearest_byte(v + h(zero) if zero else v, out_dtype, neon)

    out = te.compute(i64(shape), one, name="gelu_quantized")
    return te.create_prim_func([w, k, out]).with_attr("global_symbol", name)


def _from_sdot(var, values) -> bool:
    """Whether ``var`` is a packed sdot kernel's output (a call_tir of an ``arm_sdot`` kernel)."""
    value = values.get(var)
    return isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir")) \
        and value.args[0].name_hint.startswith("arm_sdot")


def fold_gelu_quantize(mod: tvm.IRModule, func_name: str = "main", half: bool = False,
                       neon: bool = False) -> tuple[tvm.IRModule, int]:
    """``quantize(k * x * (1 + erf(x / c)), s, z)``, x = a * float(acc) + b and k the product of the constant
    factors (0.5, SmoothQuant's per-channel m) -> with y = float(acc) * (a / c) + b / c,
    ``quantize((y + y * erf(y)) * (k * c / s) + z, 1, 0)``. Constant operands only (run FoldConstant
    first). With ``half`` (a CPU with float16 vector arithmetic, the A76's), y (times lam) is rounded to float16
    and everything after it is :func:`gelu_quantize_half`, in float16: 8 values a vector instead of 4
    (``neon``: its aarch64 instructions). Returns (module, how many quantizes were folded)."""
    kernels, gvs, names = {}, {}, {}
    lam = _scaled_form()[0]
    def match(_var, value, values, uses):
        if not (quantize_of_var(value) and str(value.attrs.out_dtype) in ("uint8", "int8")
                and uses.get(value.args[0]) == 1):
            return None
        consts, others = [], []
        _factors(value.args[0], values, uses, consts, others)
        if len(others) != 2 or not consts:
            return None
        for x, gate in (others, others[::-1]):
            found = _erf_input(gate, values, uses)
            if found is None or not found[0].same_as(x):
                continue
            chain = affine_chain(x, values, uses)
            if chain is None or uses.get(x) != 2:  # x is read by the erf's scaling and the product only
                return None
            acc, a, b = chain
            c = found[1]
            k = np.prod(np.broadcast_arrays(*consts), axis=0) if len(consts) > 1 else consts[0]
            s, z = scalar(value.args[1]), scalar(value.args[2])
            scale = lam if half else 1.0  # the float16 kernel's w = lam y
            a, b, k = (np.asarray(a) * scale / c), (np.asarray(b) * scale / c), k * c / s / scale
            name = None
            if half:  # one kernel per distinct parameters (k is its input), not one a layer
                # NEON's own instructions only where the epilogue lands in an sdot kernel (vectors of 8 or 4
                # lanes); a generic kernel may vectorize wider, and LLVM cannot split a target intrinsic
                key = (tuple(int(d) for d in value.ty.shape), k.shape, str(value.attrs.out_dtype), float(z),
                       neon and _from_sdot(acc, values))
                if key not in names:
                    names[key] = f"gelu_quantize_{'x'.join(map(str, key[0]))}_{key[2]}_{len(names)}"
                    kernels[names[key]] = gelu_quantize_half(*key[:4], names[key], key[4])
                name = names[key]
            return acc, a.astype(np.float32), b.astype(np.float32), k.astype(np.float32), z, value, name
        return None

    def emit(builder, visit, item):
        acc, a, b, k, z, quantize, name = item
        y = builder.emit(relax.op.astype(visit(acc), "float32"))
        y = builder.emit(relax.op.multiply(y, relax.const(a)))
        y = builder.emit(relax.op.add(y, relax.const(b)))
        if half:
            y = builder.emit(relax.op.astype(y, "float16"))
            return builder.emit(relax.call_tir(gvs[name], [y, relax.const(k.astype(np.float16))], quantize.ty))
        g = builder.emit(relax.op.add(y, builder.emit(relax.op.multiply(y, _emit_erf(builder, y, INT8_ERF)))))
        g = builder.emit(relax.op.multiply(g, relax.const(k)))
        if z:
            g = builder.emit(relax.op.add(g, relax.const(np.float32(z))))
        return quantize_by_one(builder, g, quantize)

    return rewrite_bindings(mod, match, emit, func_name, kernels, gvs)


FoldGeluQuantize = counted_pass("FoldGeluQuantize", "gelus_folded")(fold_gelu_quantize)


def rational_erfs(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Every float32 ``erf`` left in the module's Relax functions (fp32 GELU; int8 ones not folded) as
    :func:`erf_rational`: 5 multiply-adds, 3 multiplies and a divide, where TVM's fast_erf
    (FastMathTransform) spends 9 multiply-adds, a divide and its clamp's constants (the fp32 FFN's GELU
    epilogue: ~36 instructions a vector on the Cortex-A72, results/PERFORMANCE-LOG.md 48). Returns
    (module, how many were replaced)."""
    def match(_var, value, _values, _uses):
        ok = isinstance(value, relax.Call) and value.op.same_as(_ERF) and str(value.ty.dtype) == "float32"
        return value.args[0] if ok else None

    return rewrite_functions(mod, match, lambda builder, visit, y: _emit_erf(builder, visit(y)))


RationalErfs = counted_pass("RationalErfs")(rational_erfs)


def narrow_gelu_inputs(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """An sdot kernel's sums into :func:`gelu_quantize_half` (after :mod:`squeezeedge.lowering.accumulator_bias`:
    ``float16(float32(acc) * a)``) as ``float16(int16(acc >> sh)) * (a 2^sh)``: the int32 sums shifted and
    saturated to int16 (sqshrn: one instruction for 4), converted 8 at a time (scvtf), then one float16
    multiply, where two float32 converts, two multiplies and two narrowings took 6 for 8. The shift's
    rounding is 2^(sh-1) more in the accumulators' start. sh is the layer's least that keeps, in int16, every
    channel's input up to where its 8-bit output saturates (2 w k >= 255) and down to erf's clamp (past it
    GELU is 0 to within a step; the float32 path's rational even strayed further from it as the input grew).
    A76 static 128 tokens 320.33 -> 319.15 M. Returns (module, how many were narrowed)."""
    from squeezeedge.lowering.accumulator_bias import LIMIT

    clamp = _scaled_form()[1]
    call_tir, astype, multiply = (tvm.ir.Op.get("relax." + op) for op in ("call_tir", "astype", "multiply"))

    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(call_tir)
                and value.args[0].name_hint.startswith("gelu_quantize_")):
            return None
        h, k = value.args[1].fields
        half = single_use_call(h, values, uses, astype)
        mul = None if half is None else single_use_call(half.args[0], values, uses, multiply)
        cast = None if mul is None else single_use_call(mul.args[0], values, uses, astype)
        acc = None if cast is None else single_use_call(cast.args[0], values, uses, call_tir)
        if acc is None or not acc.args[0].name_hint.startswith("arm_sdot") or len(acc.args[1].fields) != 3 \
                or not all(isinstance(c, tvm.ir.expr.Constant) for c in (mul.args[1], k, acc.args[1].fields[2])):
            return None
        a = mul.args[1].value.numpy().astype(np.float64)
        kk = k.value.numpy().astype(np.float64)
        if np.any(a <= 0) or np.any(kk <= 0):
            return None
        reach = np.broadcast_to(np.maximum(clamp, 255 / (2 * kk)) / a, np.broadcast_shapes(a.shape, kk.shape))
        sh = max(0, int(np.ceil(np.log2(reach.max() / 32767))))
        bias = acc.args[1].fields[2].value.numpy().astype(np.int64) + (1 << sh >> 1)
        if np.abs(bias).max() >= LIMIT:
            return None
        return value, acc, bias, sh, (a * 2.0 ** sh).astype(np.float16)

    def emit(builder, visit, item):
        gelu, acc, bias, sh, scale = item
        x, w, _ = (visit(arg) for arg in acc.args[1].fields)
        t = builder.emit(relax.call_tir(acc.args[0], [x, w, relax.const(bias.astype(np.int32))], acc.ty))
        if sh:
            t = builder.emit(relax.op.right_shift(t, relax.const(sh, "int32")))
        t = builder.emit(relax.op.astype(relax.op.clip(t, -32768, 32767), "int16"))
        h = builder.emit(relax.op.multiply(builder.emit(relax.op.astype(t, "float16")), relax.const(scale)))
        return builder.emit(relax.call_tir(gelu.args[0], [h, visit(gelu.args[1].fields[1])], gelu.ty))

    return rewrite_bindings(mod, match, emit, func_name)


NarrowGeluInputs = counted_pass("NarrowGeluInputs", "gelus_narrowed")(narrow_gelu_inputs)
