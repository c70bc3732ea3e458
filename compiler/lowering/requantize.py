"""Requantization: drop round trips (:func:`drop_round_trips`); fold quantize's scale into what comes
before it: a kernel's epilogue (:func:`fold_requantize`), softmax (:func:`fold_softmax_quantize`) and
layer norm (:func:`fold_layer_norm_quantize`), so that no quantize divides an element by its scale.

Round trips: dequantize -> reshape/transpose -> quantize with the same scale and zero point, or
dequantize -> quantize alone (where :mod:`squeezeedge.lowering.transposes` moved the layout ops before the dequantize).

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

from squeezeedge.lowering.lookup import _qparams_scalar, _scalar_const
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings

LAYOUT = ("relax.reshape", "relax.permute_dims")
_QUANTIZE, _DEQUANTIZE = tvm.ir.Op.get("relax.quantize"), tvm.ir.Op.get("relax.dequantize")


def _scalar(expr) -> float:
    """The value of a one-element constant (a scale, a zero point)."""
    return float(expr.value.numpy().reshape(-1)[0])


def _quantize_of_var(value) -> bool:
    """``value`` is a quantize with scalar constant parameters of a bound variable."""
    return isinstance(value, relax.Call) and value.op.same_as(_QUANTIZE) and _qparams_scalar(value) \
        and isinstance(value.args[0], relax.Var)


def _quantize_by_one(builder, x, quantize):
    """``quantize``'s round and clip alone (scale 1, zero point 0) on an ``x`` that already carries its
    scale and zero point."""
    s, z = quantize.args[1].value.numpy(), quantize.args[2].value.numpy()
    return builder.emit(relax.op.quantize(x, relax.const(np.ones_like(s)), relax.const(np.zeros_like(z)),
                                          axis=int(quantize.attrs.axis), out_dtype=str(quantize.attrs.out_dtype)))


def _same_qparams(a, b) -> bool:
    return all(_scalar_const(x) and _scalar_const(y) and np.array_equal(x.value.numpy().reshape(-1),
                                                                        y.value.numpy().reshape(-1))
               for x, y in ((a.args[1], b.args[1]), (a.args[2], b.args[2])))


def drop_round_trips(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Replace each such round trip by the layout ops on the integer tensor. Returns (module, count)."""
    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(_QUANTIZE)):
            return None
        chain, cur = [], value.args[0]
        while isinstance(cur, relax.Var) and uses.get(cur, 0) == 1 and isinstance(values.get(cur), relax.Call) \
                and isinstance(values[cur].op, tvm.ir.Op) and values[cur].op.name in LAYOUT:
            chain.append(values[cur])
            cur = values[cur].args[0]
        dq = values.get(cur) if isinstance(cur, relax.Var) else None
        if not (isinstance(dq, relax.Call) and dq.op.same_as(_DEQUANTIZE)) \
                or str(dq.args[0].ty.dtype) != str(value.attrs.out_dtype) or not _same_qparams(dq, value):
            return None
        return dq.args[0], chain[::-1]

    def emit(builder, visit, item):
        q, chain = item
        x = visit(q)
        for call in chain:
            x = builder.emit(relax.Call(call.op, [x, *call.args[1:]], call.attrs))
        return x

    return rewrite_bindings(mod, match, emit, func_name)


_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _affine_chain(root, values, uses):
    """(int32 var, a, b) when ``root`` = a * float(var) + b through a chain of single-use adds, subtracts,
    multiplies and divides by constants and one cast to float32 (a kernel's epilogue); else None. Before
    the cast only adds and subtracts: an int32 multiply may wrap and an int32 divide floors."""
    steps, cur, casts = [], root, 0
    while isinstance(cur, relax.Var) and isinstance(values.get(cur), relax.Call) and (cur is root or uses.get(cur) == 1):
        call = values[cur]
        if not isinstance(call.op, tvm.ir.Op):
            break
        if call.op.name == "relax.astype" and str(call.attrs.dtype) == "float32" \
                and str(call.args[0].ty.dtype) == "int32":
            casts += 1
        elif casts and call.op.name in ("relax.multiply", "relax.divide"):
            return None
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
    29.2 ms here (results/PERFORMANCE-LOG.md). The same value in real arithmetic: float32 may
    round a result lying within an ulp of .5 the other way, one step of the 8-bit output. Constant
    operands only (run FoldConstant first). Returns (module, how many quantizes were folded)."""
    def match(_var, value, values, uses):
        if not (_quantize_of_var(value) and str(value.attrs.out_dtype) in ("uint8", "int8")):
            return None
        found = _affine_chain(value.args[0], values, uses)
        if found is None:
            return None
        acc, a, b = found
        s, z = _scalar(value.args[1]), _scalar(value.args[2])
        return acc, (np.asarray(a) / s).astype(np.float32), (np.asarray(b) / s + z).astype(np.float32), value

    def emit(builder, visit, item):
        acc, scale, shift, quantize = item
        x = builder.emit(relax.op.astype(visit(acc), "float32"))
        x = builder.emit(relax.op.multiply(x, relax.const(scale)))
        x = builder.emit(relax.op.add(x, relax.const(shift)))
        # quantize's round and clip, not relax.op.round: that lowers to a nearbyint which LLVM does not
        # vectorize along the rows (the attention epilogue ran 20% slower with it)
        return _quantize_by_one(builder, x, quantize)

    return rewrite_bindings(mod, match, emit, func_name)


_SOFTMAX = tvm.ir.Op.get("relax.nn.softmax")


def _te_softmax_quantize(shape: tuple[int, ...], scale: float, zero: int, out_dtype: str, name: str,
                         source: tuple | None = None):
    """x [..., N] -> quantize(softmax(x, -1), scale, zero): the row's max, exp (TVM's fast_exp, as
    FastMathTransform gives nn.softmax), sum, then one reciprocal a row, 1 / (sum * scale), and a multiply
    an element, where softmax then quantize divided each element twice.

    With ``source`` = (q dtype, q zero point, a, mask shape), x is a * (q - zero point) + mask computed
    here from the 8-bit q (the attention scores) and a float mask broadcast against it: the kernel
    before writes one byte a score, not four."""
    from tvm import te, topi

    i64 = lambda d: tvm.tirx.const(d, "int64")  # noqa: E731
    f32 = lambda v: tvm.tirx.const(float(v), "float32")  # noqa: E731
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    full = tuple(i64(d) for d in shape)
    *rows, n = full
    if source is None:
        x = te.placeholder(full, "float32", name="x")
        inputs = [x]
    else:
        q_dtype, q_zero, a, mask_shape = source
        q = te.placeholder(full, q_dtype, name="q")
        mask = te.placeholder(tuple(i64(d) for d in mask_shape), "float32", name="mask")
        inputs = [q, mask]
        x = te.compute(full, lambda *i: f32(a) * (q[i].astype("float32") - f32(q_zero)) + mask[tuple(
            i64(0) if d == 1 else idx for d, idx in zip(mask_shape, i))], name="x")
    k1, k2 = te.reduce_axis((i64(0), n), "k1"), te.reduce_axis((i64(0), n), "k2")
    top = te.compute(rows, lambda *i: te.max(x[(*i, k1)], axis=k1), name="row_max")
    e = topi.fast_exp(te.compute(full, lambda *i: x[i] - top[i[:-1]], name="shifted"))
    total = te.compute(rows, lambda *i: te.sum(e[(*i, k2)], axis=k2), name="row_sum")
    inv = te.compute(rows, lambda *i: f32(1.0) / (total[i] * f32(scale)), name="row_scale")
    out = te.compute(full, lambda *i: te.max(te.min(te.round(e[i] * inv[i[:-1]]) + f32(zero), f32(hi)), f32(lo))
                     .astype(out_dtype), name="quantized")
    return te.create_prim_func([*inputs, out]).with_attr("global_symbol", name)


def _scores_source(x, values, uses):
    """(q, zero point, a, mask) when softmax's input ``x`` is a * dequantize(q) + mask (dequantize,
    then a divide or multiply by a scalar, then an added float tensor), each step read once; else None."""
    def call(var, *ops):
        v = values.get(var) if isinstance(var, relax.Var) and uses.get(var) == 1 else None
        return v if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in ops else None

    add = call(x, "relax.add")
    if add is None:
        return None
    for scaled, mask in (add.args, add.args[::-1]):
        step = call(scaled, "relax.divide", "relax.multiply")
        if step is None or not isinstance(mask, relax.Var) or str(mask.ty.dtype) != "float32" \
                or mask.ty.ndim != x.ty.ndim or not _scalar_const(step.args[1]):
            continue
        dq = call(step.args[0], "relax.dequantize")
        if dq is None or not _qparams_scalar(dq) \
                or str(dq.args[0].ty.dtype) not in ("uint8", "int8"):
            continue
        c, s1 = _scalar(step.args[1]), _scalar(dq.args[1])
        a = s1 / c if step.op.name == "relax.divide" else s1 * c
        return dq.args[0], int(_scalar(dq.args[2])), a, mask
    return None


def fold_softmax_quantize(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """``quantize(softmax(x, axis=-1), s, z)`` with scalar s, z -> one kernel that divides once a row
    (and, where x is ``a * dequantize(q) + mask``, reads the 8-bit q and the mask itself).

    Softmax divides every exp by the row's sum and quantize divides the result by s: two divisions an
    element, which the scheduled kernel could not hide (SqueezeBERT's attention softmax: 93 -> 77 us with
    both replaced by a multiply, results/PERFORMANCE-LOG.md). Here the row's max, exp and sum are
    as before and each element gets ``round(exp * (1 / (sum * s))) + z``: the same value in real
    arithmetic, a float32 tie may round the other way. Returns (module, how many were folded)."""
    kernels = {}

    def match(_var, value, values, uses):
        if not (_quantize_of_var(value) and uses.get(value.args[0]) == 1
                and str(value.attrs.out_dtype) in ("uint8", "int8")):
            return None
        sm = values.get(value.args[0])
        if not (isinstance(sm, relax.Call) and sm.op.same_as(_SOFTMAX) and str(sm.args[0].ty.dtype) == "float32"):
            return None
        shape = tuple(int(d) for d in sm.args[0].ty.shape)
        if int(sm.attrs.axis) not in (-1, len(shape) - 1):
            return None
        s, z = _scalar(value.args[1]), int(_scalar(value.args[2]))
        dtype = str(value.attrs.out_dtype)
        name = f"softmax_quantize_{'x'.join(map(str, shape))}_{len(kernels)}"
        scores = _scores_source(sm.args[0], values, uses)
        if scores is None:
            kernels[name], args = _te_softmax_quantize(shape, s, z, dtype, name), [sm.args[0]]
        else:
            q, qz, a, mask = scores
            source = (str(q.ty.dtype), qz, a, tuple(int(d) for d in mask.ty.shape))
            kernels[name], args = _te_softmax_quantize(shape, s, z, dtype, name, source), [q, mask]
        return args, name, relax.TensorType(shape, dtype)

    gvs = {}  # name -> GlobalVar, once the kernels are in the module

    def emit(builder, visit, item):
        args, name, out_ty = item
        return builder.emit(relax.call_tir(gvs[name], [visit(a) for a in args], out_ty))

    return rewrite_bindings(mod, match, emit, func_name, kernels=kernels, gvs=gvs)


_LAYER_NORM = tvm.ir.Op.get("relax.nn.layer_norm")


def fold_layer_norm_quantize(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """``quantize(layer_norm(x, g, b), s, z)`` with constant g, b and scalar s, z ->
    ``quantize(layer_norm(x, g / s, b / s + z), 1, 0)``: quantize's division by s (one an element) moves
    into the constants. The same value in real arithmetic; a float32 tie may round the other way.
    Returns (module, how many were folded)."""
    def match(_var, value, values, uses):
        if not (_quantize_of_var(value) and uses.get(value.args[0]) == 1):
            return None
        ln = values.get(value.args[0])
        if not (isinstance(ln, relax.Call) and ln.op.same_as(_LAYER_NORM)
                and all(isinstance(a, tvm.ir.expr.Constant) for a in ln.args[1:3])):
            return None
        s, z = _scalar(value.args[1]), _scalar(value.args[2])
        g, b = (a.value.numpy().astype(np.float64) for a in ln.args[1:3])
        return ln, (g / s).astype(np.float32), (b / s + z).astype(np.float32), value

    def emit(builder, visit, item):
        ln, g, b, quantize = item
        x = builder.emit(relax.Call(ln.op, [visit(ln.args[0]), relax.const(g), relax.const(b)], ln.attrs))
        return _quantize_by_one(builder, x, quantize)

    return rewrite_bindings(mod, match, emit, func_name)


# the rewrites as module passes (squeezeedge.lowering.pipeline declares their order)
DropRoundTrips = counted_pass("DropRoundTrips", "round_trips_dropped")(drop_round_trips)
FoldRequantize = counted_pass("FoldRequantize", "epilogues_folded")(fold_requantize)
FoldSoftmaxQuantize = counted_pass("FoldSoftmaxQuantize", "softmax_folded")(fold_softmax_quantize)
FoldLayerNormQuantize = counted_pass("FoldLayerNormQuantize", "layer_norms_folded")(fold_layer_norm_quantize)
