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
