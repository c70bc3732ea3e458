"""The attention's run-time operand packing for sdot as NEON zips (:func:`zip_pack_operands`).

The packed attention matmuls (:meth:`squeezeedge.lowering.int8._Rewriter.packed_pair`) read K and V in
sdot's layout: 4 x 4 blocks of 4 tokens x 4 head dims. After the transposes sink, each is a reshape and a
permute_dims of the key / value projection's output x [1, S, H*D] (int8, tokens x channels):

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


def packed_layout(x: np.ndarray, heads: int, tokens_inner: bool) -> np.ndarray:
    """x [1, S, H*D] in the packed layout: V's (``tokens_inner``, [1, H, D/4, S/4, 4, 4]) or K's ([1, H, S/4,
    D/4, 4, 4])."""
    _, s, c = x.shape
    blocks = x.reshape(1, s // 4, 4, heads, c // heads // 4, 4)
    return blocks.transpose(0, 3, 4, 1, 5, 2) if tokens_inner else blocks.transpose(0, 3, 1, 4, 2, 5)


def _zip(a: str, b: str, width: int, high: int) -> str:
    """TVMScript for zip1 (``high`` 0) / zip2 (1) of two 16-byte vectors, elements of ``width`` bytes."""
    n = 16 // width
    mask = [byte for e in range(n // 2) for src in (0, 1)
            for byte in range((src * n + high * n // 2 + e) * width, (src * n + high * n // 2 + e + 1) * width)]
    return f"T.Shuffle([{a}, {b}], {mask})"


def zip_pack_kernel(tokens: int, heads: int, head_dim: int, tokens_inner: bool, name: str) -> tvm.tirx.PrimFunc:
    """x [1, S, H*D] int8 -> :func:`packed_layout`: per head and 4 tokens, each 16 head dims' 4 rows loaded
    and zipped twice (bytes then halves for V, words then doublewords for K) into 4 blocks."""
    from tvm.script import from_source
    from tvm.script import tirx

    c, a_n, d_n = heads * head_dim, tokens // 4, head_dim // 4
    if tokens_inner:
        shape, first, second = (1, heads, d_n, a_n, 4, 4), 1, 2
        dst = lambda j: f"((h * {d_n} + q * 4 + {j}) * {a_n} + a) * 16"  # noqa: E731
    else:
        shape, first, second = (1, heads, a_n, d_n, 4, 4), 4, 8
        dst = lambda j: f"((h * {a_n} + a) * {d_n} + q * 4 + {j}) * 16"  # noqa: E731
    row = [f"xf[T.Ramp(a * {4 * c} + {i * c} + h * {head_dim} + q * 16, 1, 16)]" for i in range(4)]
    pairs = [[_zip(row[i], row[i + 1], first, high) for high in (0, 1)] for i in (0, 2)]
    stores = "\n".join(f"            of[T.Ramp({dst(j)}, 1, 16)] = {_zip(pairs[0][j // 2], pairs[1][j // 2], second, j % 2)}"
                       for j in range(4))
    source = f'''
@T.prim_func
def {name}(x: T.Buffer((1, {tokens}, {c}), "int8"), out: T.Buffer({shape}, "int8")):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True}})
    with T.sblock("root"):
        xf = T.decl_buffer(({tokens * c},), "int8", data=x.data)
        of = T.decl_buffer(({tokens * c},), "int8", data=out.data)
        for h, a, q in T.grid({heads}, {a_n}, {head_dim // 16}):
{stores}
'''
    return from_source(source, extra_vars={"T": tirx}, check_well_formed=False).with_attr("global_symbol", name)


def _match_layout(x_shape: tuple[int, ...], shape6: tuple[int, ...], axes: list[int], out_shape: tuple[int, ...]):
    """(heads, head_dim, tokens_inner) when permute_dims(reshape(x, shape6), axes) is one of the packed
    layouts, checked on every element's index; else None."""
    if len(x_shape) != 3 or x_shape[0] != 1 or len(out_shape) != 6 or out_shape[:1] != (1,) \
            or out_shape[-2:] != (4, 4) or x_shape[1] % 4:
        return None
    index = np.arange(x_shape[1] * x_shape[2]).reshape(x_shape)
    moved = index.reshape(shape6).transpose(axes)
    heads = out_shape[1]
    if x_shape[2] % heads:
        return None
    head_dim = x_shape[2] // heads
    if head_dim % 16:
        return None
    for tokens_inner in (True, False):
        ref = packed_layout(index, heads, tokens_inner)
        if ref.shape == moved.shape and np.array_equal(ref, moved):
            return heads, head_dim, tokens_inner
    return None


def _through_reshapes(expr, values):
    """(the int8 rank-3 tensor a chain of reshapes and int8 -> int8 casts starts from, whether there was a
    reshape), or (None, False): the chain keeps the elements' row-major order, so it is one reshape of it."""
    found, reshaped = None, False
    while isinstance(expr, relax.Var) and str(getattr(expr.ty, "dtype", "")) == "int8":
        if getattr(expr.ty, "ndim", 0) == 3:
            found = expr
        value = values.get(expr)
        if not isinstance(value, relax.Call):
            break
        if value.op.same_as(_RESHAPE):
            reshaped = True
        elif not value.op.same_as(_ASTYPE):
            break
        expr = value.args[0]
    return found, reshaped


def zip_pack_operands(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Every ``permute_dims(reshape(x, ...))`` of an int8 [1, S, H*D] x into sdot's K or V layout as a call of
    :func:`zip_pack_kernel`. Returns (module, how many were rewritten)."""
    kernels, gvs = {}, {}

    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(_PERMUTE)) or value.attrs.axes is None:
            return None
        x, seen = _through_reshapes(value.args[0], values)
        if x is None or not seen:
            return None
        try:
            x_shape = tuple(int(d) for d in x.ty.shape)
            shape6 = tuple(int(d) for d in value.args[0].ty.shape)
            out_shape = tuple(int(d) for d in value.ty.shape)
        except (TypeError, ValueError, AttributeError):
            return None
        found = _match_layout(x_shape, shape6, [int(a) for a in value.attrs.axes], out_shape)
        if found is None:
            return None
        heads, head_dim, tokens_inner = found
        name = f"zip_pack_{'v' if tokens_inner else 'k'}_{x_shape[1]}x{x_shape[2]}_h{heads}"
        if name not in gvs and name not in kernels:
            kernels[name] = zip_pack_kernel(x_shape[1], heads, head_dim, tokens_inner, name)
        return x, name, relax.TensorType(out_shape, "int8")

    def emit(builder, visit, item):
        x, name, out_ty = item
        return builder.emit(relax.call_tir(gvs[name], [visit(x)], out_ty))

    return rewrite_bindings(mod, match, emit, func_name, kernels, gvs)


ZipPackOperands = counted_pass("ZipPackOperands", "operands_zip_packed")(zip_pack_operands)
