"""Elementwise float functions between a dequantize and a quantize become 256-entry lookup tables.

In a QDQ model, GELU sits between ``dequantize(q)`` of an 8-bit tensor and ``quantize`` back to 8
bits: ``quantize(x * 0.5 * (1 + erf(x / sqrt(2))), s2, z2)`` with ``x = dequantize(q, s1, z1)``. With
scalar scales and zero points the output is a function of the 8-bit input alone, so it is computed
once for all 256 values at compile time and looked up at run time (``take``), the way integer-only
runtimes do their nonlinearities. The table is evaluated by TVM on the very same ops (exact erf,
before any fast-math rewrite), so each element gets exactly what the float chain would give it.

SqueezeBERT's GELU epilogue was half the time of its largest kernel (results/PERFORMANCE-LOG.md).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.qdq import DEQUANTIZE, QUANTIZE, qparams_scalar, scalar_const
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings

# ops of one tensor argument (plus scalar constants) that act element by element
ELEMENTWISE = {"relax." + name for name in (
    "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "erf", "tanh", "exp", "sigmoid",
    "sqrt", "rsqrt", "negative", "abs", "log", "clip", "nn.relu", "nn.gelu", "nn.gelu_tanh", "nn.silu")}


def _chain(root, values, uses):
    """(dequantize var, [chain vars in topological order]) when ``root`` is an elementwise function of one
    8-bit dequantized tensor with scalar constants only, each chain var read only inside the chain
    (and root by the quantize alone); else None."""
    order, seen, source = [], set(), []

    def walk(var) -> bool:
        if var in seen:
            return True
        seen.add(var)
        value = values.get(var)
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return False
        if value.op.same_as(DEQUANTIZE):
            if not qparams_scalar(value) or str(value.args[0].ty.dtype) not in ("uint8", "int8"):
                return False
            source.append(var)
            return True
        if value.op.name not in ELEMENTWISE:
            return False
        for arg in value.args:
            if isinstance(arg, relax.Var):
                if not walk(arg):
                    return False
            elif not scalar_const(arg):
                return False
        order.append(var)
        return True

    if not walk(root) or len(source) != 1 or not order:
        return None
    inside = {}
    for var in order:
        for arg in values[var].args:
            if isinstance(arg, relax.Var) and arg in seen and arg is not source[0]:
                inside[arg] = inside.get(arg, 0) + 1
    inside[root] = inside.get(root, 0) + 1  # the quantize
    if any(uses.get(var, 0) != inside.get(var, 0) for var in order):
        return None  # an intermediate value is needed elsewhere too
    return source[0], order


def _table(dq, order, values, quantize, target) -> np.ndarray:
    """The chain evaluated by TVM on every 8-bit input value, in index order (s8: -128 first)."""
    in_dtype = str(dq.args[0].ty.dtype)
    lo = -128 if in_dtype == "int8" else 0
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((256,), in_dtype))
    with bb.function("table", [q]):
        x = bb.emit(relax.op.dequantize(q, dq.args[1], dq.args[2], axis=0, out_dtype="float32"))
        env = {}  # chain var -> its value here; the chain's one other var is the dequantized input x
        for var in order:
            call = values[var]
            args = [env.get(a, x) if isinstance(a, relax.Var) else a for a in call.args]
            env[var] = bb.emit(relax.Call(call.op, args, call.attrs))
        out = bb.emit(relax.op.quantize(env[order[-1]], quantize.args[1], quantize.args[2], axis=0,
                                        out_dtype=str(quantize.attrs.out_dtype)))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["table"](tvm.runtime.tensor(np.arange(lo, lo + 256).astype(in_dtype))).numpy()


def lookup_tables(mod: tvm.IRModule, func_name: str = "main", target: str = "llvm") -> tuple[tvm.IRModule, int]:
    """Replace every ``quantize(f(dequantize(q)))`` with scalar quantization parameters and elementwise
    ``f`` by ``take(table, q)``. Returns (module, how many were replaced); tables are evaluated on this
    machine's CPU (``target`` is only for that)."""
    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(QUANTIZE) and qparams_scalar(value)
                and isinstance(value.args[0], relax.Var)):
            return None
        found = _chain(value.args[0], values, uses)
        if found is None:
            return None
        dq_var, order = found
        dq = values[dq_var]
        return dq.args[0], _table(dq, order, values, value, target), str(dq.args[0].ty.dtype)

    def emit(builder, visit, item):
        q, lut, in_dtype = item
        idx = visit(q)  # u8 indexes the table as it is: the kernel before writes 1 byte, not a 4-byte index
        if in_dtype == "int8":
            idx = builder.emit(relax.op.add(relax.op.astype(idx, "int32"), relax.const(128, "int32")))
        return builder.emit(relax.op.take(relax.const(lut), idx, axis=0))

    return rewrite_bindings(mod, match, emit, func_name)


# the rewrites as module passes (squeezeedge.lowering.pipeline declares their order)
LookupTables = counted_pass("LookupTables", "lookup_tables")(lookup_tables)
