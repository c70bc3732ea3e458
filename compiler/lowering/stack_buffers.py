"""A kernel's small buffers on the stack where TVM would allocate them at run time (:func:`StackBuffers`).

TVM's ``LowerTVMBuiltin`` keeps a CPU kernel's global buffer on the stack only under 1 KB
(``kMaxStackAlloca``); a larger one becomes a ``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace``
pair, a call into the runtime's workspace pool each time its scope runs. The A76 sdot kernels copy each row
tile's activations to such a buffer (8 rows x K bytes: 1 KB for the attention's P V, 6 KB for a 768-wide
layer), under the parallel loop over tiles: 3,456 pool calls an inference at 128 tokens, 1.4 M instructions
of the 311.7 M, and more once the pool holds other lengths' buffers (the any-length library counted 0.23 M
more after the real texts' buckets ran). Marked ``disable_lower_builtin``, the pass leaves such a buffer
alone and LLVM places it in the kernel's (or its parallel task's) stack frame.

Only constant-size global buffers up to :data:`STACK_BYTES` move: a task's frame stays far below the
boards' 8 MB thread stacks.
"""

from __future__ import annotations

import contextlib

import tvm
from tvm.tirx import stmt as s

STACK_BYTES = 32 * 1024  # the largest row tile's copy is 8 x 3,072 bytes (the FFN's second layer)
_KEEP = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def _small(alloc: s.AllocBuffer, limit: int) -> bool:
    buf = alloc.buffer
    if buf.scope() != "global" or not all(isinstance(d, tvm.tirx.IntImm) for d in buf.shape):
        return False
    size = buf.dtype.bits * buf.dtype.lanes // 8
    for d in buf.shape:
        size *= int(d)
    return 0 < size <= limit


def _on_stack(node, limit: int):
    """``node`` with every small global AllocBuffer under it marked to stay on the stack (the node itself
    where nothing under it changed). Containers: SeqStmt, For, AttrStmt, IfThenElse, While; the other
    statements have no body."""
    if isinstance(node, s.AllocBuffer):
        if _KEEP in node.annotations or not _small(node, limit):
            return node
        return s.AllocBuffer(node.buffer, {**dict(node.annotations), _KEEP: tvm.tirx.const(True, "bool")})
    if isinstance(node, s.SeqStmt):
        seq = [_on_stack(x, limit) for x in node.seq]
        return node if all(a.same_as(b) for a, b in zip(seq, node.seq)) else s.SeqStmt(seq)
    if isinstance(node, s.For):
        body = _on_stack(node.body, limit)
        return node if body.same_as(node.body) else s.For(
            node.loop_var, node.min, node.extent, node.kind, body, node.thread_binding, node.annotations, node.step)
    if isinstance(node, s.AttrStmt):
        body = _on_stack(node.body, limit)
        return node if body.same_as(node.body) else s.AttrStmt(node.node, node.attr_key, node.value, body)
    if isinstance(node, s.IfThenElse):
        then = _on_stack(node.then_case, limit)
        other = None if node.else_case is None else _on_stack(node.else_case, limit)
        same = then.same_as(node.then_case) and (other is None or other.same_as(node.else_case))
        return node if same else s.IfThenElse(node.condition, then, other)
    if isinstance(node, s.While):
        body = _on_stack(node.body, limit)
        return node if body.same_as(node.body) else s.While(node.condition, body)
    return node


def StackBuffers(limit: int = STACK_BYTES):  # noqa: N802  (a pass, named as TVM's are)
    """The TIR pass: small global buffers marked for the stack (run before ``LowerTVMBuiltin``)."""
    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="StackBuffers")
    def stack_buffers(func, _mod, _ctx):
        body = _on_stack(func.body, limit)
        return func if body.same_as(func.body) else func.with_body(body)
    return stack_buffers


@contextlib.contextmanager
def before_lower_builtin(limit: int = STACK_BYTES):
    """While open, TVM's TIR pipeline runs :func:`StackBuffers` right before ``LowerTVMBuiltin`` (the pipeline
    looks the pass up when it runs)."""
    transform = tvm.tirx.transform
    builtin = transform.LowerTVMBuiltin
    transform.LowerTVMBuiltin = lambda: tvm.transform.Sequential([StackBuffers(limit), builtin()])
    try:
        yield
    finally:
        transform.LowerTVMBuiltin = builtin
