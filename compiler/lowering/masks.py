"""The attention mask kept per key: ``logical_and(c, m)`` with c a constant all-true [B, 1, S, S] and m the
[B, 1, 1, S] padding mask (what the exported model builds) is m itself wherever it is only broadcast into the
scores (:func:`narrow_masks`), so that the scores' kernel can start its sums at it
(:mod:`squeezeedge.lowering.accumulator_bias`)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.rewrite import counted_pass, rewrite_functions

_AND, _WHERE, _ADD = (tvm.ir.Op.get("relax." + op) for op in ("logical_and", "where", "add"))


def _is(value, op) -> bool:
    return isinstance(value, relax.Call) and value.op.same_as(op)


def _readers(var, values) -> list:
    return [(v, val) for v, val in values.items() if any(a.same_as(var) for a in getattr(val, "args", []))]


def narrow_masks(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``logical_and(c, m)``, c an all-true constant, read only by ``where``s that are read only by adds to a
    tensor of the and's full shape or larger (the scores' mask): m. Returns (module, how many)."""
    def match(var, value, values, uses):
        if not (_is(value, _AND) and isinstance(value.args[0], tvm.ir.expr.Constant)
                and isinstance(value.args[1], relax.Var) and bool(np.all(value.args[0].value.numpy()))):
            return None
        full = [int(d) for d in value.ty.shape]
        readers = _readers(var, values)
        for v, where in readers:
            if not _is(where, _WHERE) or not where.args[0].same_as(var):
                return None
            for _, add in _readers(v, values):
                other = next((a for a in add.args if not a.same_as(v)), None) if _is(add, _ADD) else None
                shape = [int(d) for d in other.ty.shape] if other is not None else []
                if other is None or len(shape) != len(full) or any(s < f for s, f in zip(shape, full)):
                    return None
        return value.args[1] if readers and uses.get(var) == len(readers) else None

    return rewrite_functions(mod, match, lambda builder, visit, m: visit(m))


NarrowMasks = counted_pass("NarrowMasks")(narrow_masks)
