"""What the lowering passes share: reading a Relax function's bindings, replacing some of them (the
find-and-rebind skeleton of every binding-level rewrite), adding kernels to a module, and turning a
``(module) -> (module, count)`` rewrite into a named ``tvm.transform.module_pass`` that records its count."""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax


def bindings(func) -> tuple[dict, dict]:
    """var -> bound value, and var -> how many bindings (or the function's result) read it."""
    values, uses = {}, {}

    def count(expr):
        def visit(e):
            if isinstance(e, relax.Var):
                uses[e] = uses.get(e, 0) + 1
        relax.analysis.post_order_visit(expr, visit)

    for block in func.body.blocks:
        for b in block.bindings:
            values[b.var] = b.value
            count(b.value)
    count(func.body.body)
    return values, uses


def single_use_call(var, values: dict, uses: dict, op):
    """The call bound to ``var`` when it is a call of ``op`` (a tvm.ir.Op) read by one binding alone, else None:
    a step of a chain a rewrite may replace whole."""
    value = values.get(var) if isinstance(var, relax.Var) and uses.get(var) == 1 else None
    return value if isinstance(value, relax.Call) and value.op.same_as(op) else None


def rebind(mod: tvm.IRModule, func_name: str, replace: dict, emit) -> tvm.IRModule:
    """A copy of ``mod`` where each binding of a var in ``replace`` is replaced by what
    ``emit(builder, visit, replace[var])`` emits (``visit`` maps an old expression to the new graph's);
    what is left unused is removed."""
    if not replace:
        return mod

    @relax.expr_functor.mutator
    class Swap(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in replace:
                return super().visit_var_binding_(binding)
            self.set_var_remap(binding.var, emit(self.builder_, self.visit_expr, replace[binding.var]))

    out = mod.clone()
    out[func_name] = Swap(out).visit_expr(mod[func_name])
    return relax.transform.DeadCodeElimination()(out)


def rewrite_bindings(mod: tvm.IRModule, match: Callable, emit: Callable, func_name: str = "main",
                     kernels: dict | None = None, gvs: dict | None = None) -> tuple[tvm.IRModule, int]:
    """Find and rebind: ``match(var, value, values, uses)`` says, for each binding of ``mod[func_name]``,
    what to replace it with (anything but None), ``emit(builder, visit, item)`` emits the replacement
    (see :func:`rebind`). PrimFuncs ``match`` put in ``kernels`` (name -> PrimFunc) are added to the
    module first, their GlobalVars into ``gvs`` for ``emit`` to call. Returns (module, how many bindings
    were replaced)."""
    values, uses = bindings(mod[func_name])
    replace = {}
    for var, value in values.items():
        item = match(var, value, values, uses)
        if item is not None:
            replace[var] = item
    if replace and kernels:
        mod, added = add_functions(mod, kernels)
        gvs.update(added)
    return rebind(mod, func_name, replace, emit), len(replace)


def rewrite_functions(mod: tvm.IRModule, match: Callable, emit: Callable, kernels: dict | None = None,
                      gvs: dict | None = None) -> tuple[tvm.IRModule, int]:
    """:func:`rewrite_bindings` on every Relax function of ``mod`` (a merged module's buckets), the count
    summed. PrimFuncs ``match`` puts in ``kernels`` are added once: a kernel already in ``gvs`` is
    called, not added again."""
    total = 0
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod, n = rewrite_bindings(mod, match, emit, gv.name_hint, kernels, gvs)
            total += n
            if kernels:
                kernels.clear()
    return mod, total


def add_functions(mod: tvm.IRModule, funcs: dict[str, tvm.tirx.PrimFunc]) -> tuple[tvm.IRModule, dict]:
    """``mod`` with ``funcs`` (name -> PrimFunc) added through a BlockBuilder, which types their GlobalVars
    as ``relax.call_tir`` needs; returns (module, name -> GlobalVar)."""
    builder = relax.BlockBuilder(mod)
    gvs = {name: builder.add_func(func, name) for name, func in funcs.items()}
    return builder.get(), gvs


def counted_pass(name: str, field: str | None = None):
    """Decorator: a rewrite ``fn(mod, **options) -> (mod, count)`` as a module pass class named ``name``;
    ``Pass(report, **options)`` stores the count in ``report.<field>``."""
    def wrap(fn):
        @tvm.transform.module_pass(opt_level=0, name=name)
        class CountedPass:
            def __init__(self, report=None, **options):
                self.report, self.options = report, options

            def transform_module(self, mod, _ctx):
                mod, count = fn(mod, **self.options)
                if self.report is not None and field is not None:
                    setattr(self.report, field, count)
                return mod

        CountedPass.__doc__ = fn.__doc__
        return CountedPass
    return wrap
