"""compiler/lowering/zip_packing.py: the attention's K and V packed for sdot by zips give exactly the layout
int8.py's packing gives (run here on x86: the kernel is plain TIR shuffles), the pass rewrites only that
reshape / permute, and on the A76 the kernel is vector loads and zips, no byte gathers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.int8 import SDOT, _pack_relax, _padded
from squeezeedge.lowering.zip_packing import packed_layout, padded, zip_pack_kernel, zip_pack_operands


def _run(mod, *arrays):
    ex = tvm.compile(relax.get_pipeline("zero")(mod), target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in arrays)).numpy()


@pytest.mark.parametrize("tokens, heads, head_dim", [(16, 12, 64), (8, 2, 32), (12, 1, 16)])
@pytest.mark.parametrize("tokens_inner", [True, False])
def test_the_kernel_gives_the_packed_layout(tokens, heads, head_dim, tokens_inner):
    x = np.random.default_rng(3).integers(-128, 128, (1, tokens, heads * head_dim)).astype(np.int8)
    ref = packed_layout(x, heads, tokens_inner)
    # the layout int8._pack_relax gives P V's operand V [h, s, d] and Q K^T's operand K^T [h, d, s]:
    # [..., K, N] -> [..., N/4, K/4, 4 (n), 4 (k)]
    per_head = x.reshape(1, tokens, heads, head_dim).transpose(0, 2, 1, 3)
    b = per_head if tokens_inner else per_head.transpose(0, 1, 3, 2)
    k, n = b.shape[-2:]
    assert np.array_equal(ref, b.reshape(1, heads, k // 4, 4, n // 4, 4).transpose(0, 1, 4, 2, 5, 3))
    lib = tvm.compile(tvm.IRModule({"pack": zip_pack_kernel(tokens, heads, head_dim, tokens_inner, "pack")}),
                      target="llvm")
    out = tvm.runtime.empty(ref.shape, "int8")
    lib["pack"](tvm.runtime.tensor(x), out)
    assert np.array_equal(out.numpy(), ref)


@pytest.mark.parametrize("tokens, padded_to, pad", [(14, 16, 0), (10, 16, -3), (18, 20, 7)])
@pytest.mark.parametrize("tokens_inner", [True, False])
def test_the_kernel_pads_the_tokens_with_the_zero_point(tokens, padded_to, pad, tokens_inner):
    x = np.random.default_rng(4).integers(-128, 128, (1, tokens, 64)).astype(np.int8)
    ref = packed_layout(padded(x, padded_to, pad), 2, tokens_inner)
    kernel = zip_pack_kernel(tokens, 2, 32, tokens_inner, "pack", padded_to, pad)
    out = tvm.runtime.empty(ref.shape, "int8")
    tvm.compile(tvm.IRModule({"pack": kernel}), target="llvm")["pack"](tvm.runtime.tensor(x), out)
    assert np.array_equal(out.numpy(), ref)


@pytest.mark.parametrize("tokens_inner", [True, False])
def test_the_pass_takes_a_padded_operand_as_int8_packs_it(tokens_inner):
    """A 14-token bucket's K and V: heads split off, the tokens padded to 16 with the zero point (int8._padded),
    packed by int8._pack_relax for sdot: one zip kernel reading x itself."""
    tokens, heads, head_dim, zero = 14, 2, 32, -5
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, tokens, heads * head_dim), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            per_head = bb.emit(relax.op.permute_dims(relax.op.reshape(x, (1, tokens, heads, head_dim)), [0, 2, 1, 3]))
            b = per_head if tokens_inner else bb.emit(relax.op.permute_dims(per_head, [0, 1, 3, 2]))  # V, or K^T
            shape = (1, heads, 16, head_dim) if tokens_inner else (1, heads, head_dim, 16)
            b = bb.emit(_padded(b, tuple(int(d) for d in b.ty.shape), *((2, 0) if tokens_inner else (0, 2)), zero))
            out = bb.emit_output(_pack_relax(b, shape, SDOT))
        bb.emit_func_output(out)
    mod = relax.transform.Normalize()(bb.get())
    new, n = zip_pack_operands(mod)
    assert n == 1 and "R.nn.pad" not in new["main"].script()
    v = np.random.default_rng(6).integers(-128, 128, (1, tokens, heads * head_dim)).astype(np.int8)
    assert np.array_equal(_run(new, v), _run(mod, v))
    assert np.array_equal(_run(new, v), packed_layout(padded(v, 16, zero), heads, tokens_inner))


def _attention_operand(tokens: int, heads: int, head_dim: int, axes: list[int]):
    """x [1, S, H*D] int8 -> heads -> (a no-op cast) -> 4 x 4 blocks -> permute_dims(axes), as the int8 rewrite
    and the sunk transposes leave K and V."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, tokens, heads * head_dim), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.reshape(x, (1, tokens, heads, head_dim)))
            c = bb.emit(relax.op.astype(h, "int8"))
            blocks = bb.emit(relax.op.reshape(c, (1, tokens // 4, 4, heads, head_dim // 4, 4)))
            out = bb.emit_output(relax.op.permute_dims(blocks, axes))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("axes, tokens_inner", [([0, 3, 4, 1, 5, 2], True), ([0, 3, 1, 4, 2, 5], False)])
def test_the_pass_replaces_the_packing_with_the_kernel(axes, tokens_inner):
    mod = _attention_operand(16, 2, 32, axes)
    new, n = zip_pack_operands(mod)
    script = new["main"].script()
    assert n == 1 and "zip_pack_" in script and "R.permute_dims" not in script
    x = np.random.default_rng(5).integers(-128, 128, (1, 16, 64)).astype(np.int8)
    assert np.array_equal(_run(new, x), _run(mod, x))
    assert np.array_equal(_run(new, x), packed_layout(x, 2, tokens_inner))


def test_other_permutes_are_left_as_they_were():
    mod = _attention_operand(16, 2, 32, [0, 3, 4, 1, 2, 5])  # 4 x 4 blocks, but not transposed
    new, n = zip_pack_operands(mod)
    assert n == 0 and "R.permute_dims" in new["main"].script()


def test_the_a76_kernel_is_loads_and_zips():
    a76 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    for tokens_inner, (first, second) in ((True, ("16b", "8h")), (False, ("4s", "2d"))):
        mod = tvm.IRModule({"pack": zip_pack_kernel(16, 12, 64, tokens_inner, "pack")})
        asm = tvm.compile(mod, target=a76).mod.inspect_source("asm")
        asm = asm[asm.index("pack_compute_:"):]
        asm = asm[:asm.index(".Lfunc_end")]  # the kernel, not its argument checks
        for zip_ in ("zip1", "zip2"):
            assert re.search(rf"\t{zip_}\tv\d+\.{first}", asm), (zip_, first)
        assert re.search(rf"\tzip2\tv\d+\.{second}", asm), second
        assert "ldrb" not in asm and "strb" not in asm
