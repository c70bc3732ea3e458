"""A kernel's epilogue folded into the quantize after it: ``quantize(a * float(acc) + b, s, z)`` becomes one
multiply-add and quantize's round and clip (:func:`fold_requantize`), so no quantize divides an element by
its scale."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.qdq import quantize_by_one, quantize_of_var, scalar
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings


_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def affine_chain(root, values, uses):
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


_MOVES = ("relax.reshape", "relax.permute_dims")


def _movable(call, moves: bool) -> bool:
    """Whether ``call`` may sit between an epilogue and its quantize and move after it: a reshape; with
    ``moves`` also a permute_dims or a multiply by a constant (folded into the epilogue)."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
        return False
    if call.op.name == "relax.reshape":
        return True
    if call.op.name == "relax.permute_dims":
        return moves
    return moves and call.op.name == "relax.multiply" and isinstance(call.args[1], tvm.ir.expr.Constant)


def _factor_before(steps: list, shape: tuple[int, ...]) -> np.ndarray:
    """The constant multiplies among ``steps`` (reshapes, permute_dims and multiplies, in the order they run on
    a tensor of ``shape``) as one factor on that tensor before them, broadcast-compressed: where each of its
    elements ends up, times what multiplies it there (an axis it does not vary along kept at size 1)."""
    where = np.arange(int(np.prod(shape))).reshape(shape)
    factor = np.ones(where.size)
    for step in steps:
        if step.op.name == "relax.reshape":
            where = where.reshape([int(d) for d in step.ty.shape])
        elif step.op.name == "relax.permute_dims":
            axes = step.attrs.axes
            where = where.transpose(None if axes is None else [int(x) for x in axes])
        else:
            factor[where.ravel()] *= np.broadcast_to(step.args[1].value.numpy(), where.shape).ravel()
    factor = factor.reshape(shape)
    for axis in range(len(shape)):
        if np.all(factor == factor.take([0], axis=axis)):
            factor = factor.take([0], axis=axis)
    return factor


def fold_requantize(mod: tvm.IRModule, func_name: str = "main", moves: bool = True) -> tuple[tvm.IRModule, int]:
    """``quantize(a * float(acc) + b, s, z)`` -> ``clip(round(float(acc) * (a/s) + (b/s + z)))`` cast to 8 bits.

    A packed kernel's int32 sums reach the next layer's 8-bit input through a chain of per-channel
    constants: zero-point correction, the s_x * s_w rescale, the bias, then quantize's divide and zero
    point. Folded at compile time the epilogue is one multiply-add and quantize's round and clip (as a
    quantize by 1 with zero point 0), not seven vector ops with a division (results/PERFORMANCE-LOG.md).
    The same value in real arithmetic: float32 may
    round a result lying within an ulp of .5 the other way, one step of the 8-bit output. Constant
    operands only (run FoldConstant first). A reshape between the chain and the quantize (the attention's
    Q/K/V split into heads) moves after the quantize, where it is a view: the kernel writes 8 bits, and no
    kernel of its own reads 32 to write them. With ``moves`` (aarch64) so do permute_dims and a constant
    multiply among them (the attention output's heads merged, then SmoothQuant's m: m mapped back onto the
    kernel's layout): the matmul's epilogue quantizes and 8-bit values are moved, where a kernel of its own
    moved and quantized float32 ones (A76 128 tokens 317.75 -> 317.17 M). Returns (module, how many quantizes
    were folded)."""
    def match(_var, value, values, uses):
        if not (quantize_of_var(value) and str(value.attrs.out_dtype) in ("uint8", "int8")):
            return None
        source, steps = value.args[0], []
        while uses.get(source) == 1 and _movable(values.get(source), moves):
            steps.append((source, values[source]))  # the attention's heads split or merged (and a scale after):
            source = values[source].args[0]  # quantized first, then moved as bytes
        while steps and steps[-1][1].op.name not in _MOVES:  # the chain's own multiplies stay in it
            source = steps.pop()[0]
        steps = [m for _, m in steps]
        found = affine_chain(source, values, uses)
        if found is None or (steps and uses.get(source) != 1):
            return None
        acc, a, b = found
        if steps:
            factor = _factor_before(steps[::-1], tuple(int(d) for d in source.ty.shape))
            a, b = np.asarray(a) * factor, np.asarray(b) * factor
        s, z = scalar(value.args[1]), scalar(value.args[2])
        layout = [m for m in steps if m.op.name in _MOVES]
        return acc, (np.asarray(a) / s).astype(np.float32), (np.asarray(b) / s + z).astype(np.float32), value, layout

    def emit(builder, visit, item):
        acc, scale, shift, quantize, layout = item
        x = builder.emit(relax.op.astype(visit(acc), "float32"))
        x = builder.emit(relax.op.multiply(x, relax.const(scale)))
        x = builder.emit(relax.op.add(x, relax.const(shift)))
        # quantize's round and clip, not relax.op.round: that lowers to a nearbyint which LLVM does not
        # vectorize along the rows (the attention epilogue ran 20% slower with it)
        x = quantize_by_one(builder, x, quantize)
        for op in reversed(layout):  # 8-bit values moved: a view (reshape) or a byte transpose
            x = builder.emit(relax.Call(op.op, [x, *op.args[1:]], op.attrs))
        return x

    return rewrite_bindings(mod, match, emit, func_name)


FoldRequantize = counted_pass("FoldRequantize", "epilogues_folded")(fold_requantize)


def fold_scale_chains(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """``add(chain, v)``, chain = a * float(acc) + b through two or more constant steps and read there alone,
    v a tensor -> ``float(acc) * a (+ b) + v``: the attention scores' two scales (s_q s_k, then 1 / sqrt(d))
    one multiply, where each was a multiply an element before the mask's add. The same value in real
    arithmetic (float32 rounds once where it rounded twice). Returns (module, how many were folded)."""
    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.add"
                and isinstance(value.args[1], relax.Var) and uses.get(value.args[0]) == 1):
            return None
        found = affine_chain(value.args[0], values, uses)
        if found is None:
            return None
        steps, cur = 0, values.get(value.args[0])
        while isinstance(cur, relax.Call) and isinstance(cur.op, tvm.ir.Op) and cur.op.name in _AFFINE:
            steps, cur = steps + 1, values.get(next(a for a in cur.args if isinstance(a, relax.Var)))
        # only where fewer operations come out (the residual layers' multiply and bias add stay as they are)
        return (*found, value.args[1]) if steps > 1 + bool(np.any(found[2] != 0)) else None

    def emit(builder, visit, item):
        acc, a, b, other = item
        x = builder.emit(relax.op.astype(visit(acc), "float32"))
        x = builder.emit(relax.op.multiply(x, relax.const(np.asarray(a, np.float32))))
        if np.any(b != 0):
            x = builder.emit(relax.op.add(x, relax.const(np.asarray(b, np.float32))))
        return builder.emit(relax.op.add(x, visit(other)))

    return rewrite_bindings(mod, match, emit, func_name)


FoldScaleChains = counted_pass("FoldScaleChains", "scale_chains_folded")(fold_scale_chains)
