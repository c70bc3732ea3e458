"""The attention's run-time operand packing for sdot as NEON zips (:func:`zip_pack_operands`).

The packed attention matmuls (:meth:`squeezeedge.lowering.int8._Rewriter.packed_pair`) read K and V in
sdot's layout: 4 x 4 blocks of 4 tokens x 4 head dims. After the transposes sink, each is a chain of
reshapes and permute_dims (and, in a bucket whose keys are padded to a multiple of 4, a pad with the operand's
zero point) of the key / value projection's output x [1, S, H*D] (int8, tokens x channels):

- V, P V's operand: out[0, h, d / 4, s / 4, d % 4, s % 4] (a block's bytes transposed);
- K, Q K^T's operand: out[0, h, s / 4, d / 4, s % 4, d % 4] (4-byte words from 4 tokens).

TVM lowers those to a byte gather a byte (A76, 16 tokens: V's took 0.31 M instructions, 2.1 a byte). Here
each is a kernel of 16-byte loads of 4 tokens' rows and two rounds of zips (.16b then .8h for V, .4s then .2d
for K): 16 to 20 instructions a 64 bytes. The kernel is written out (TVMScript, ``T.Shuffle`` of two
vectors, which LLVM selects as zip1 / zip2) and marked scheduled; the match is checked element by element
against the kernel's own layout, so any other reshape / permute is left as it was.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings

_PERMUTE = tvm.ir.Op.get("relax.permute_dims")
_RESHAPE = tvm.ir.Op.get("relax.reshape")
_ASTYPE = tvm.ir.Op.get("relax.astype")
_PAD = tvm.ir.Op.get("relax.nn.pad")
_STEPS = (_RESHAPE, _PERMUTE, _ASTYPE, _PAD)


def packed_layout(x: np.ndarray, heads: int, tokens_inner: bool) -> np.ndarray:
    """x [1, S, H*D] (S a multiple of 4) in the packed layout: V's (``tokens_inner``, [1, H, D/4, S/4, 4, 4])
    or K's ([1, H, S/4, D/4, 4, 4])."""
    _, s, c = x.shape
    blocks = x.reshape(1, s // 4, 4, heads, c // heads // 4, 4)
    return blocks.transpose(0, 3, 4, 1, 5, 2) if tokens_inner else blocks.transpose(0, 3, 1, 4, 2, 5)


def padded(x: np.ndarray, tokens: int, value) -> np.ndarray:
    """x [1, S, C] with ``tokens`` - S more tokens, every byte ``value`` (an attention operand's zero point)."""
    return np.pad(x, ((0, 0), (0, tokens - x.shape[1]), (0, 0)), constant_values=value)


def _zip(a: str, b: str, width: int, high: int) -> str:
    """TVMScript for zip1 (``high`` 0) / zip2 (1) of two 16-byte vectors, elements of ``width`` bytes."""
    n = 16 // width
    mask = [byte for e in range(n // 2) for src in (0, 1)
            for byte in range((src * n + high * n // 2 + e) * width, (src * n + high * n // 2 + e + 1) * width)]
    return f"T.Shuffle([{a}, {b}], {mask})"


def zip_pack_kernel(tokens: int, heads: int, head_dim: int, tokens_inner: bool, name: str,
                    padded_to: int | None = None, pad: int = 0) -> tvm.tirx.PrimFunc:
    """x [1, S, H*D] int8 -> :func:`packed_layout` of x padded to ``padded_to`` tokens (a multiple of 4; S
    when None) with ``pad``: per head and 4 tokens, each 16 head dims' 4 rows loaded (a padding row is
    ``pad`` in every byte) and zipped twice (bytes then halves for V, words then doublewords for K) into 4
    blocks."""
    from tvm.script import from_source
    from tvm.script import tirx

    total = padded_to or tokens
    c, a_n, d_n = heads * head_dim, total // 4, head_dim // 4
    if tokens_inner:
        shape, first, second = (1, heads, d_n, a_n, 4, 4), 1, 2
        dst = lambda a, j: f"((h * {d_n} + q * 4 + {j}) * {a_n} + {a}) * 16"  # noqa: E731
    else:
        shape, first, second = (1, heads, a_n, d_n, 4, 4), 4, 8
        dst = lambda a, j: f"((h * {a_n} + {a}) * {d_n} + q * 4 + {j}) * 16"  # noqa: E731

    def stores(a, real: int, indent: str) -> str:
        row = [f"xf[T.Ramp({a} * {4 * c} + {i * c} + h * {head_dim} + q * 16, 1, 16)]" if i < real
               else f"T.Broadcast(T.int8({pad}), 16)" for i in range(4)]
        pairs = [[_zip(row[i], row[i + 1], first, high) for high in (0, 1)] for i in (0, 2)]
        return "\n".join(f"{indent}of[T.Ramp({dst(a, j)}, 1, 16)] = "
                         f"{_zip(pairs[0][j // 2], pairs[1][j // 2], second, j % 2)}" for j in range(4))

    body = f"        for h, a, q in T.grid({heads}, {tokens // 4}, {head_dim // 16}):\n{stores('a', 4, ' ' * 12)}"
    if total > tokens:  # the last block of real tokens and its padding, then blocks of padding only
        tails = [(a, min(4, max(0, tokens - 4 * a))) for a in range(tokens // 4, a_n)]
        body += "".join(f"\n        for h, q in T.grid({heads}, {head_dim // 16}):\n{stores(a, real, ' ' * 12)}"
                        for a, real in tails)
    source = f'''
@T.prim_func
def {name}(x: T.Buffer((1, {tokens}, {c}), "int8"), out: T.Buffer({shape}, "int8")):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True}})
    with T.sblock("root"):
        xf = T.decl_buffer(({tokens * c},), "int8", data=x.data)
        of = T.decl_buffer(({total * c},), "int8", data=out.data)
{body}
'''
    # the root block is what TVM 0.27's Relax passes expect of a PrimFunc's body (without it the build fails:
    # "func->body->IsInstance<SBlockRealizeNode>"), and what the parser's TIR verifier refuses: not verified
    return from_source(source, extra_vars={"T": tirx}, check_well_formed=False).with_attr("global_symbol", name)


def _chains(expr, values) -> list:
    """[(x, steps)]: each int8 rank-3 tensor that a chain of reshapes, permute_dims, constant pads and int8 ->
    int8 casts ending at ``expr`` passes through, nearest first, with the chain's steps from it on (each (op,
    attrs, output shape))."""
    steps, found = [], []
    while isinstance(expr, relax.Var) and str(getattr(expr.ty, "dtype", "")) == "int8":
        if getattr(expr.ty, "ndim", 0) == 3 and steps:
            found.append((expr, steps[::-1]))
        value = values.get(expr)
        if not isinstance(value, relax.Call) or not any(value.op.same_as(op) for op in _STEPS):
            break
        if value.op.same_as(_PAD) and str(value.attrs.pad_mode) != "constant":
            break
        steps.append((value.op, value.attrs, tuple(int(d) for d in value.ty.shape)))
        expr = value.args[0]
    return found


def _replay(x: np.ndarray, steps, marker: int) -> np.ndarray | None:
    """The chain's steps on numpy ``x`` (pads fill ``marker``); None where a pad is not one constant."""
    for op, attrs, shape in steps:
        if op.same_as(_RESHAPE):
            x = x.reshape(shape)
        elif op.same_as(_PERMUTE):
            x = x.transpose([int(a) for a in attrs.axes]) if attrs.axes is not None else x.transpose()
        elif op.same_as(_PAD):
            widths = [int(w) for w in attrs.pad_width]
            x = np.pad(x, list(zip(widths[::2], widths[1::2])), constant_values=marker)
        if x.shape != shape:
            return None
    return x


def _match_layout(x_shape: tuple[int, ...], steps, out_shape: tuple[int, ...]):
    """(heads, head_dim, tokens_inner, padded tokens, pad value) when the chain's steps take x to one of the
    packed layouts of x padded along its tokens (with one constant: a pad's value), checked on every
    element's index; else None."""
    if len(x_shape) != 3 or x_shape[0] != 1 or len(out_shape) != 6 or out_shape[0] != 1 or out_shape[-2:] != (4, 4):
        return None
    heads = out_shape[1]
    if x_shape[2] % heads or (x_shape[2] // heads) % 16:
        return None
    pads = {float(attrs.pad_value) for op, attrs, _ in steps if op.same_as(_PAD)}
    if len(pads) > 1 or any(not v.is_integer() or not -128 <= v <= 127 for v in pads):
        return None
    pad = int(pads.pop()) if pads else 0
    index = np.arange(x_shape[1] * x_shape[2]).reshape(x_shape)
    moved = _replay(index, steps, -1)
    if moved is None:
        return None
    head_dim, total = x_shape[2] // heads, moved.size // x_shape[2]
    if total % 4 or total < x_shape[1]:
        return None
    for tokens_inner in (True, False):
        ref = packed_layout(padded(index, total, -1), heads, tokens_inner)
        if ref.shape == moved.shape and np.array_equal(ref, moved):
            return heads, head_dim, tokens_inner, total, pad
    return None


def zip_pack_operands(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Every chain of reshapes, permutes, pads and casts taking an int8 [1, S, H*D] x into sdot's K or V layout
    (padded or not) as a call of :func:`zip_pack_kernel`. Returns (module, how many were rewritten)."""
    kernels, gvs = {}, {}

    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(_PERMUTE)):
            return None
        try:
            out_shape = tuple(int(d) for d in value.ty.shape)
            found = next(((x, f) for x, steps in _chains(_var, values) for f in [_match_layout(
                tuple(int(d) for d in x.ty.shape), steps, out_shape)] if f is not None), None)
        except (TypeError, ValueError, AttributeError):  # symbolic shapes
            return None
        if found is None:
            return None
        x, found = found
        x_shape = tuple(int(d) for d in x.ty.shape)
        heads, head_dim, tokens_inner, total, pad = found
        name = f"zip_pack_{'v' if tokens_inner else 'k'}_{x_shape[1]}x{x_shape[2]}_h{heads}" \
            + (f"_to{total}_pad{pad}".replace("-", "m") if total > x_shape[1] else "")
        if name not in gvs and name not in kernels:
            kernels[name] = zip_pack_kernel(x_shape[1], heads, head_dim, tokens_inner, name, total, pad)
        return x, name, relax.TensorType(out_shape, "int8")

    def emit(builder, visit, item):
        x, name, out_ty = item
        return builder.emit(relax.call_tir(gvs[name], [visit(x)], out_ty))

    return rewrite_bindings(mod, match, emit, func_name, kernels, gvs)


ZipPackOperands = counted_pass("ZipPackOperands", "operands_zip_packed")(zip_pack_operands)
