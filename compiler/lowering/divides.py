"""Float divides by a constant as multiplies by its reciprocal (:func:`reciprocal_divides`)."""

from __future__ import annotations

import tvm


def reciprocal_divides(mod):
    """x / c -> x * (1 / c) for every float32 scalar constant c (GELU's x / sqrt(2), attention's
    scores / sqrt(d)): a vector divide costs ~10x a multiply and LLVM keeps it (no fast-math); in
    SqueezeBERT's GELU epilogue it was ~a quarter of that kernel's float work. Within 1 ulp of x / c."""
    import numpy as np
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    pattern = is_op("relax.divide")(wildcard(), is_const())

    def rewrite(call, _):
        c = call.args[1].value.numpy()
        if c.dtype != np.float32 or c.size != 1 or not np.isfinite(1 / np.float64(c.reshape(-1)[0])):
            return call
        return relax.op.multiply(call.args[0], relax.const(np.float32(1) / c.reshape(c.shape)))

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod


@tvm.transform.module_pass(opt_level=0, name="ReciprocalDivides")
def ReciprocalDivides(mod, _ctx):  # noqa: N802 (a pass, named as TVM's are)
    """:func:`reciprocal_divides` as a module pass."""
    return reciprocal_divides(mod)
