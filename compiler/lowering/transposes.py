"""Sink transposes through layout-agnostic ops until they cancel.

SqueezeBERT works channels-first (NCW) for its convolutions and channels-last (NWC) for its layer
norms, so its graph transposes around every layer norm; the int8 rewrite adds two more around every
pre-packed kernel (they read and write NWC, see :mod:`squeezeedge.lowering.int8`). Each is a pass over memory and
splits what would be one fused kernel in two: the intermediate layer's int32 NWC->NCW transpose with
its GELU epilogue was a sixth of the untuned int8 library's time (``squeezeedge profile``).

:func:`sink_transposes` moves every ``permute_dims`` down through the ops that do not care about the
layout (elementwise ops with the other operands' shapes permuted to match, quantize/dequantize,
softmax, keepdims reductions and layer norm with their axes renumbered, reshapes that only split
dims, such as into attention heads) and drops a transpose that meets its inverse. Where a value is
still needed in the old layout, a transpose is materialized at that use; unused ones are removed by
dead-code elimination. The pass is greedy (a value used both ways can end up transposed twice), so it
reports the counts before and after; build and tune run it on every model.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.rewrite import counted_pass

UNARY = {"relax.astype", "relax.erf", "relax.exp", "relax.tanh", "relax.sqrt", "relax.rsqrt", "relax.negative",
         "relax.abs", "relax.sigmoid", "relax.clip", "relax.nn.relu", "relax.nn.gelu", "relax.nn.silu",
         "relax.round", "relax.floor", "relax.ceil"}
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
          "relax.power"}
AXIS = {"relax.quantize", "relax.dequantize", "relax.nn.softmax"}  # one ``axis`` attribute, data first
REDUCE = {"relax.sum": relax.op.sum, "relax.mean": relax.op.mean, "relax.max": relax.op.max}  # with keepdims


def _shape(expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except (TypeError, ValueError):  # symbolic dims
        return None


@relax.expr_functor.mutator
class _Sinker(relax.PyExprMutator):
    def __init__(self, mod, all_sink: dict):
        super().__init__(mod)
        self.moved = 0
        self.all_sink = all_sink  # original var -> every use of it is an op a transpose can sink through
        self.source: dict = {}  # new var -> (var in the other layout, perm): var == permute_dims(src, perm)

    def _emit_alias(self, binding, value):
        var = self.builder_.emit(value, binding.var.name)
        self.set_var_remap(binding.var, var)
        return var

    def _operand(self, arg, rank: int, perm: list[int]):
        """``arg`` in the sunk layout: its source if it was transposed by ``perm``, a reshaped or
        transposed copy if that costs nothing (a constant, or a tensor whose only moved dims are 1s),
        else None."""
        src = self.source.get(arg)
        if src is not None:
            return src[0] if list(src[1]) == perm else None
        shape = _shape(arg)
        if shape is None or len(shape) > rank:
            return None
        if all(d == 1 for d in shape):
            return arg
        full = (1,) * (rank - len(shape)) + shape  # broadcasting aligns trailing dims
        inv = np.argsort(perm)
        moved = tuple(full[i] for i in inv)  # shape in the sunk layout: moved[perm[i]] = full[i]
        kept = [inv[j] for j in range(rank) if moved[j] != 1]
        if kept == sorted(kept):  # the dims that are not 1 keep their order: a reshape moves them
            return relax.op.reshape(arg, moved)
        if isinstance(arg, tvm.ir.expr.Constant):
            return relax.const(np.ascontiguousarray(arg.data.numpy().reshape(full).transpose(inv)))
        return None

    def visit_var_binding_(self, binding):
        value = self.visit_expr(binding.value)
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return super().visit_var_binding_(binding)
        op = value.op.name
        if not isinstance(binding.var, relax.DataflowVar):  # a function output keeps its binding
            src = self.source.get(value.args[0]) if op == "relax.permute_dims" else None
            if src is not None:
                composed = [src[1][a] for a in _axes(value)]
                binding = relax.VarBinding(binding.var, src[0] if composed == sorted(composed)
                                           else relax.op.permute_dims(src[0], composed))
            return super().visit_var_binding_(binding)
        if op == "relax.permute_dims":
            return self._permute(binding, value)
        if any(a in self.source and not self.all_sink.get(old, False)
               for a, old in zip(value.args, binding.value.args)):
            return super().visit_var_binding_(binding)  # a transposed value that must exist anyway
        if op == "relax.reshape" and value.args[0] in self.source:
            split = self._split(value)
            if split is not None:
                inner = self.builder_.emit(split[0], binding.var.name + "_t")
                var = self._emit_alias(binding, relax.op.permute_dims(inner, split[1]))
                self.source[var] = (inner, split[1])
                self.moved += 1
                return
        sunk = self._sink(op, value)
        if sunk is None:
            return super().visit_var_binding_(binding)
        new, perm = sunk
        inner = self.builder_.emit(new, binding.var.name + "_t")
        var = self._emit_alias(binding, relax.op.permute_dims(inner, perm))
        self.source[var] = (inner, perm)
        self.moved += 1

    def _permute(self, binding, value):
        data = value.args[0]
        rank = len(_shape(data) or ())
        axes = _axes(value)
        src = self.source.get(data)
        if src is None:
            var = self._emit_alias(binding, value)
            self.source[var] = (data, axes)
            return
        composed = [src[1][a] for a in axes]  # permute(permute(x, p), q) = permute(x, p[q])
        if composed == list(range(rank)):
            self.set_var_remap(binding.var, src[0])
            return
        var = self._emit_alias(binding, relax.op.permute_dims(src[0], composed))
        self.source[var] = (src[0], composed)

    def _split(self, call):
        """A reshape that only splits dims of a transposed tensor (SqueezeBERT's [1, 768, 128] ->
        [1, 12, 64, 128] into attention heads), as (the same split of the untransposed tensor, the perm
        that restores the reshape's layout); None for any other reshape."""
        src, perm = self.source[call.args[0]]
        shape_in, shape_out, shape_src = _shape(call.args[0]), _shape(call), _shape(src)
        if None in (shape_in, shape_out, shape_src):
            return None
        groups, o = [], 0
        for d in shape_in:  # the output dims each input dim splits into, in order
            group, size = [], 1
            while o < len(shape_out) and (not group or size < d) and size * shape_out[o] <= d:
                if d != 1 and shape_out[o] == 1 and group:
                    break
                size *= shape_out[o]
                group.append(o)
                o += 1
            if size != d or not group:
                return None
            groups.append(group)
        if o != len(shape_out):
            return None
        inv = list(np.argsort(perm))  # source dim j became input dim inv[j]
        new_shape, start = [], {}
        for j in range(len(shape_src)):
            start[j] = len(new_shape)
            new_shape += [shape_out[k] for k in groups[inv[j]]]
        new_perm = [0] * len(shape_out)
        for i, group in enumerate(groups):
            for t, k in enumerate(group):
                new_perm[k] = start[perm[i]] + t
        return relax.op.reshape(src, new_shape), new_perm

    def _sink(self, op: str, call):
        """(the call on the untransposed tensors, the perm that restores its layout), or None."""
        if not call.args or call.args[0] not in self.source and op not in BINARY:
            return None
        out = _shape(call)
        if out is None:
            return None
        rank = len(out)
        if op in UNARY or op in AXIS:
            src, perm = self.source[call.args[0]]
            if len(perm) != rank:
                return None
            if op in UNARY:
                return relax.Call(call.op, [src, *call.args[1:]], call.attrs, call.ty_args), perm
            axis = perm[int(call.attrs.axis) % rank]
            if op == "relax.nn.softmax":
                return relax.op.nn.softmax(src, axis=axis), perm
            make = relax.op.quantize if op == "relax.quantize" else relax.op.dequantize
            return make(src, *call.args[1:], axis=axis, out_dtype=str(call.attrs.out_dtype)), perm
        if op in BINARY:
            perms = [self.source[a][1] for a in call.args if a in self.source]
            if not perms or any(list(p) != list(perms[0]) for p in perms) or len(perms[0]) != rank \
                    or any(_shape(a) != out for a in call.args if a in self.source):
                return None
            perm = list(perms[0])
            args = [self._operand(a, rank, perm) for a in call.args]
            if any(a is None for a in args):
                return None
            return relax.Call(call.op, args, call.attrs, call.ty_args), perm
        if op in REDUCE and call.attrs.keepdims and call.attrs.axis is not None:
            src, perm = self.source[call.args[0]]
            axes = [perm[int(a) % rank] for a in call.attrs.axis]
            return REDUCE[op](src, axis=axes, keepdims=True), perm
        if op == "relax.nn.layer_norm":
            src, perm = self.source[call.args[0]]
            axes = [perm[int(a) % rank] for a in call.attrs.axes]
            if len(perm) != rank or axes != sorted(axes):
                return None  # gamma and beta follow the axes' order
            return relax.op.nn.layer_norm(src, *call.args[1:], axes=axes, epsilon=call.attrs.epsilon,
                                          center=call.attrs.center, scale=call.attrs.scale), perm
        return None


def _axes(permute) -> list[int]:
    rank = len(permute.args[0].ty.shape)
    return [int(a) for a in permute.attrs.axes] if permute.attrs.axes is not None else list(range(rank))[::-1]


def sink_transposes(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, dict[str, int]]:
    """``mod`` with the transposes of ``mod[func_name]`` sunk and cancelled (see the module doc).
    Returns the module and counts: ``before`` and ``after`` (permute_dims left), ``moved`` ops."""
    before = _count(mod[func_name])
    sinker = _Sinker(mod, _all_uses_sink(mod[func_name]))
    func = sinker.visit_expr(mod[func_name])
    out = mod.clone()
    out[func_name] = func
    out = relax.transform.DeadCodeElimination([func_name])(out)
    after = _count(out[func_name])
    if after > before:  # the greedy pass made it worse: keep the graph as it was
        return mod, {"before": before, "after": before, "moved": 0}
    return out, {"before": before, "after": after, "moved": sinker.moved}


SINKABLE = UNARY | BINARY | AXIS | set(REDUCE) | {"relax.nn.layer_norm", "relax.permute_dims", "relax.reshape"}


def _all_uses_sink(func) -> dict:
    """var -> True when every use of it is an op a transpose can sink through (a transposed value
    with any other use must be materialized anyway, so sinking past its other uses only adds more)."""
    uses: dict = {}

    def visit(e):
        if isinstance(e, relax.Call):
            ok = isinstance(e.op, tvm.ir.Op) and e.op.name in SINKABLE
            for a in e.args:
                if isinstance(a, relax.Var):
                    uses[a] = uses.get(a, True) and ok
        elif isinstance(e, (relax.Tuple, relax.SeqExpr)):
            for a in (e.fields if isinstance(e, relax.Tuple) else [e.body]):
                if isinstance(a, relax.Var):
                    uses[a] = False

    relax.analysis.post_order_visit(func, visit)
    return uses


def _count(func) -> int:
    n = 0

    def visit(e):
        nonlocal n
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.permute_dims":
            n += 1

    relax.analysis.post_order_visit(func, visit)
    return n


# the rewrite as a module pass (squeezeedge.lowering.pipeline declares the order)
SinkTransposes = counted_pass("SinkTransposes")(sink_transposes)
