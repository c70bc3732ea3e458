"""Reading compiled kernels (TIR PrimFuncs) from their IR, not their printed script: every node reached
through the fields TVM reflects, the names of their blocks, and the LLVM intrinsics they call."""

from __future__ import annotations

from typing import Iterator

import tvm
from tvm.ir.expr import Call
from tvm.ir.prim.expr import Add, IntImm, Mul
from tvm.ir.expr import TensorLoad as BufferLoad
from tvm.tirx.stmt import BufferStore
from tvm_ffi import Array, Object

_SKIP = {"span", "buffer_map", "alloc_buffers", "match_buffers", "reads", "writes", "annotations", "attrs",
         "iter_vars", "buffer", "checked_type_", "struct_info_"}


def nodes(root) -> Iterator:
    """Every statement and expression under ``root`` (itself first), depth first."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        info = getattr(type(node), "__tvm_ffi_type_info__", None)
        children = []
        while info is not None:
            for field in info.fields:
                if field.name not in _SKIP:
                    value = getattr(node, field.name, None)
                    if isinstance(value, Array):
                        children.extend(v for v in value if isinstance(v, Object))
                    elif isinstance(value, Object) and not isinstance(value, tvm.ir.Span):
                        children.append(value)
            info = info.parent_type_info
        stack.extend(reversed(children))


def sblocks(func: tvm.tirx.PrimFunc) -> list:
    """The (schedulable) blocks of a PrimFunc."""
    from tvm.s_tir import SBlock

    return [n for n in nodes(func.body) if isinstance(n, SBlock)]


def reduction_updates(func: tvm.tirx.PrimFunc) -> list:
    """The products each reduction block accumulates: ``acc[i] = acc[i] + a * b`` -> the ``a * b`` node."""
    found = []
    for block in sblocks(func):
        body = block.body
        if block.init is None or not isinstance(body, BufferStore):
            continue
        value = body.value
        if isinstance(value, Add) and isinstance(value.a, BufferLoad) \
                and value.a.source.same_as(body.buffer) and isinstance(value.b, Mul):
            found.append(value.b)
    return found


def llvm_intrinsics_called(func: tvm.tirx.PrimFunc) -> set[int]:
    """The LLVM intrinsic ids a PrimFunc's code calls (``T.call_llvm_pure_intrin`` / ``call_llvm_intrin``)."""
    ops = {tvm.ir.Op.get("tirx.call_llvm_pure_intrin"), tvm.ir.Op.get("tirx.call_llvm_intrin")}
    return {int(n.args[0].value) for n in nodes(func.body)
            if isinstance(n, Call) and any(n.op.same_as(op) for op in ops)
            and isinstance(n.args[0], IntImm)}
