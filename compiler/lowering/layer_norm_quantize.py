"""quantize(layer_norm(x)) with quantize's scale moved into the layer norm's constants
(:func:`fold_layer_norm_quantize`)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.qdq import quantize_by_one, quantize_of_var, scalar
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings

_LAYER_NORM = tvm.ir.Op.get("relax.nn.layer_norm")


def fold_layer_norm_quantize(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """``quantize(layer_norm(x, g, b), s, z)`` with constant g, b and scalar s, z ->
    ``quantize(layer_norm(x, g / s, b / s + z), 1, 0)``: quantize's division by s (one an element) moves
    into the constants. The same value in real arithmetic; a float32 tie may round the other way.
    Returns (module, how many were folded)."""
    def match(_var, value, values, uses):
        if not (quantize_of_var(value) and uses.get(value.args[0]) == 1):
            return None
        ln = values.get(value.args[0])
        if not (isinstance(ln, relax.Call) and ln.op.same_as(_LAYER_NORM)
                and all(isinstance(a, tvm.ir.expr.Constant) for a in ln.args[1:3])):
            return None
        s, z = scalar(value.args[1]), scalar(value.args[2])
        g, b = (a.value.numpy().astype(np.float64) for a in ln.args[1:3])
        return ln, (g / s).astype(np.float32), (b / s + z).astype(np.float32), value

    def emit(builder, visit, item):
        ln, g, b, quantize = item
        x = builder.emit(relax.Call(ln.op, [visit(ln.args[0]), relax.const(g), relax.const(b)], ln.attrs))
        return quantize_by_one(builder, x, quantize)

    return rewrite_bindings(mod, match, emit, func_name)


FoldLayerNormQuantize = counted_pass("FoldLayerNormQuantize", "layer_norms_folded")(fold_layer_norm_quantize)


def layer_norm_and_quantize(shape, eps: float, out_dtype: str, name: str) -> tvm.tirx.PrimFunc:
    """x [shape] float32, g, b, g2, b2 [C] -> (y = (x - mean) rstd g + b, top_byte((x - mean) rstd g2 + b2)): a
    layer norm and an 8-bit quantize of it (g2 = g m / s, b2 = b m / s + z + 0.5) in one kernel, each row's
    sum and sum of squares in one pass (var = E[x^2] - mean^2), both outputs from the same (x - mean) rstd."""
    from tvm import te, tirx

    from squeezeedge.lowering.top_byte_quantize import i64, top_byte

    *lead, c = shape
    x = te.placeholder(i64(shape), "float32", name="x")
    g, b, g2, b2 = (te.placeholder(i64((c,)), "float32", name=n) for n in ("g", "b", "g2", "b2"))
    k = te.reduce_axis(i64((0, c)), "k")
    sums = te.comm_reducer(lambda a, v: (a[0] + v[0], a[1] + v[1]),
                           lambda t0, t1: (tirx.const(0.0, t0), tirx.const(0.0, t1)), name="sums")
    total, squares = te.compute(i64(lead), lambda *i: sums((x[(*i, k)], x[(*i, k)] * x[(*i, k)]), axis=k),
                                name="stats")
    inv = tirx.const(1.0 / c, "float32")
    mean = te.compute(i64(lead), lambda *i: total[i] * inv, name="mean")
    rstd = te.compute(i64(lead), lambda *i: tirx.const(1.0, "float32") / tirx.sqrt(
        squares[i] * inv - mean[i] * mean[i] + tirx.const(eps, "float32")), name="rstd")
    t = lambda i: (x[i] - mean[i[:-1]]) * rstd[i[:-1]]  # noqa: E731
    # one block writing both (a block's output cannot move under another's loop): the schedule's row loop
    # computes each 8-lane step's y and q together
    y, q = te.compute(i64(shape), lambda *i: [t(i) * g[i[-1]] + b[i[-1]],
                                             top_byte(t(i) * g2[i[-1]] + b2[i[-1]], out_dtype)], name="yq")
    return te.create_prim_func([x, g, b, g2, b2, y, q]).with_attr("global_symbol", name)


def layer_norm_outputs(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``y = layer_norm(x, g, b)`` read by an 8-bit ``quantize([multiply](y, m), s, z)`` and by another op (the
    residual's add: :func:`fold_layer_norm_quantize` takes a layer norm read by its quantize alone) as one
    :func:`layer_norm_and_quantize` kernel with both outputs: the quantize no longer reads y back from
    memory in a kernel of its own, and the row's statistics take one pass where the variance took a second.
    g, b, m, s, z constants. Returns (module, how many layer norms)."""
    from squeezeedge.lowering.qdq import QUANTIZE, qparams_scalar, scalar
    from squeezeedge.lowering.rewrite import rewrite_functions

    kernels, gvs, names, calls = {}, {}, {}, {}

    def constant(expr):
        return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) and str(expr.ty.dtype) == "float32" \
            else None

    def quantized_norm(value, values, uses):
        """(layer norm var, its call, m or None) when ``value`` is the quantize this rewrite takes."""
        if not (isinstance(value, relax.Call) and value.op.same_as(QUANTIZE) and qparams_scalar(value)
                and str(value.attrs.out_dtype) in ("int8", "uint8") and uses.get(value.args[0]) == 1):
            return None
        src, m = value.args[0], None
        mul = values.get(src)
        if isinstance(mul, relax.Call) and mul.op.same_as(tvm.ir.Op.get("relax.multiply")) \
                and constant(mul.args[1]) is not None:
            src, m = mul.args[0], constant(mul.args[1])
        ln = values.get(src)
        if not (isinstance(ln, relax.Call) and ln.op.same_as(_LAYER_NORM) and uses.get(src) == 2
                and [int(a) for a in ln.attrs.axes] in ([-1], [len(ln.ty.shape) - 1])
                and constant(ln.args[1]) is not None and constant(ln.args[2]) is not None):
            return None
        return src, ln, m

    scanned = {"values": None, "quantizes": {}}  # the function being rewritten: {layer norm var: its quantize's parts}

    def match(var, value, values, uses):
        if scanned["values"] is not values:  # (held, so a later function's bindings never take its place)
            found = ((v, quantized_norm(val, values, uses), val) for v, val in values.items())
            scanned.update(values=values, quantizes={f[0]: (v, val, *f[1:]) for v, f, val in found if f is not None})
        quantizes = scanned["quantizes"]
        if var in quantizes:
            qvar, quantize, ln, m = quantizes[var]
            s, z = scalar(quantize.args[1]), scalar(quantize.args[2])
            shape, out = tuple(int(d) for d in ln.ty.shape), str(quantize.attrs.out_dtype)
            key = (shape, float(ln.attrs.epsilon), out)
            if key not in names:
                names[key] = f"layer_norm_quantize_{'x'.join(map(str, shape))}_{len(names)}"
            if names[key] not in gvs:
                kernels[names[key]] = layer_norm_and_quantize(shape, key[1], out, names[key])
            g, b = (constant(a).astype(np.float64) for a in ln.args[1:3])
            k = (np.ones(1) if m is None else m.astype(np.float64)).reshape(-1) / s
            g2, b2 = (np.broadcast_to(v, g.shape).astype(np.float32) for v in (g * k, b * k + z + 0.5))
            return "norm", var, names[key], ln, (g2, b2), shape, out
        hit = next((k for k, item in quantizes.items() if item[0] is var), None)
        return None if hit is None else ("quantize", hit)

    def emit(builder, visit, item):
        if item[0] == "quantize":
            return builder.emit(relax.TupleGetItem(calls[item[1]], 1))
        _, norm, name, ln, m, shape, out = item
        args = [visit(ln.args[0]), visit(ln.args[1]), visit(ln.args[2]), *(relax.const(c) for c in m)]
        calls[norm] = builder.emit(relax.call_tir(gvs[name], args,
                                                  [relax.TensorType(shape, "float32"), relax.TensorType(shape, out)]))
        return builder.emit(relax.TupleGetItem(calls[norm], 0))

    mod, n = rewrite_functions(mod, match, emit, kernels, gvs)
    return mod, n // 2


LayerNormOutputs = counted_pass("LayerNormOutputs")(layer_norm_outputs)
