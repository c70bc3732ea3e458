"""Dot-product intrinsics: the pre-packed int8 kernel tensorizes onto x86 VNNI's vpdpbusd (with the
wheel's LLVM) and onto our AVX2 intrinsics (vpmaddwd; vpmaddubsw for 7-bit weights), all exact."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

from squeezeedge.lowering import intrinsics  # noqa: F401  (the byte-vector dot_16x4_vnni)
from squeezeedge.lowering.int8 import (AVX2, AVX2_U8S8, NEON, NEON16, NEON32, VNNI, _pack, _te_packed,
                                       _te_packed_pair, fits_four_products, packed_dot_for, packed_for_layer)
from squeezeedge.lowering.schedules import default_schedules

TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake", "num-cores": 2}


def _tensorized(shape, n, groups):
    func = _te_packed(shape, n, groups, "main")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    block = sch.get_sblock("vnni_dot")
    *lead, nn, k = sch.get_loops(block)
    n_o, n_i = sch.split(nn, [None, 16])
    k_o, k_i = sch.split(k, [None, 4])
    sch.reorder(*lead, n_o, k_o, n_i, k_i)
    sch.decompose_reduction(block, k_o)
    sch.tensorize(n_i, "dot_16x4_vnni")
    return sch.mod


@pytest.mark.parametrize("shape, n, groups", [((32, 128), 64, 1), ((1, 16, 256), 128, 4)])
def test_packed_kernel_uses_vpdpbusd_and_is_exact(shape, n, groups):
    target = tvm.target.Target(TARGET)
    assert packed_dot_for(target) is VNNI
    assert packed_dot_for(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})) is not VNNI
    lib = tvm.tirx.build(_tensorized(shape, n, groups), target=target)
    asm = lib.inspect_source("asm")
    assert "vpdpbusd" in asm
    rng = np.random.default_rng(0)
    k = shape[-1]
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    w = rng.integers(-128, 128, (n, k // groups), dtype=np.int8)
    ref = np.concatenate([x[..., g * (k // groups):(g + 1) * (k // groups)].astype(np.int32)
                          @ w[g * (n // groups):(g + 1) * (n // groups)].T.astype(np.int32) for g in range(groups)],
                         axis=-1)
    if "avx512_vnni" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU cannot run AVX-512 VNNI code (the code generation above was still checked)")
    y = tvm.runtime.tensor(np.zeros((*shape[:-1], n), np.int32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(_pack(w, groups)), y)
    np.testing.assert_array_equal(y.numpy(), ref)


def _reference(x, w, groups):
    k, n = x.shape[-1], w.shape[0]
    return np.concatenate([x[..., g * (k // groups):(g + 1) * (k // groups)].astype(np.int32)
                           @ w[g * (n // groups):(g + 1) * (n // groups)].T.astype(np.int32) for g in range(groups)],
                          axis=-1)


@pytest.mark.parametrize("shape, n, groups", [((1, 128, 768), 768, 4), ((1, 768), 768, 1), ((1, 24, 64), 40, 1),
                                              ((1, 32, 64), 256, 4)])
def test_avx2_packed_kernel_uses_vpmaddwd_and_is_exact(shape, n, groups):
    """The default schedule (tiles that divide, or none) tensorizes onto vpmaddwd; results equal numpy's
    int32 matmul for u8 and s8 activations at their extremes."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2})
    assert packed_dot_for(target) is AVX2 and packed_dot_for(tvm.target.Target(TARGET)).instruction == "vpdpbusd"
    mod, counts = default_schedules(tvm.IRModule({"main": _te_packed(shape, n, groups, "main", AVX2)}), target)
    assert counts == {"tensorized": 1, "tiled": 0, "parallel": 0, "naive": 0}
    lib = tvm.tirx.build(mod, target=target)
    assert "vpmaddwd" in lib.inspect_source("asm")
    if "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU cannot run AVX2 code (the code generation above was still checked)")
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (n, shape[-1] // groups), dtype=np.int8)
    w[0, :] = -128  # the corners where vpmaddubsw would saturate
    for low, high in ((0, 256), (-128, 128)):
        x = rng.integers(low, high, shape).astype(np.int16)
        x[..., :2] = high - 1
        y = tvm.runtime.tensor(np.zeros((*shape[:-1], n), np.int32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(_pack(w, groups, AVX2)), y)
        np.testing.assert_array_equal(y.numpy(), _reference(x, w, groups))


@pytest.mark.parametrize("shape, n, groups", [((1, 128, 768), 768, 4), ((1, 768), 768, 1), ((1, 24, 64), 40, 1)])
def test_avx2_u8s8_kernel_uses_vpmaddubsw_and_is_exact_for_7_bit_weights(shape, n, groups):
    """u8 activations x weights in [-64, 64]: vpmaddubsw's int16 pair sums peak at 255 * 64 * 2 = 32640 and
    cannot saturate, so the kernel equals numpy's int32 matmul at the extremes."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2})
    mod, counts = default_schedules(tvm.IRModule({"main": _te_packed(shape, n, groups, "main", AVX2_U8S8)}), target)
    assert counts == {"tensorized": 1, "tiled": 0, "parallel": 0, "naive": 0}
    lib = tvm.tirx.build(mod, target=target)
    assert "vpmaddubsw" in lib.inspect_source("asm")
    if "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU cannot run AVX2 code (the code generation above was still checked)")
    rng = np.random.default_rng(2)
    w = rng.integers(-64, 65, (n, shape[-1] // groups), dtype=np.int8)
    w[0, :], w[1, :] = -64, 64  # the largest pair sums, both signs
    x = rng.integers(0, 256, shape).astype(np.uint8)
    x[..., : shape[-1] // 2] = 255
    y = tvm.runtime.tensor(np.zeros((*shape[:-1], n), np.int32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(_pack(w, groups, AVX2_U8S8)), y)
    np.testing.assert_array_equal(y.numpy(), _reference(x, w, groups))


def test_avx2_layers_take_u8s8_only_when_it_is_exact():
    w7 = np.full((8, 4), 64, np.int8)
    w8 = w7.copy()
    w8[3, 1] = -65  # one weight beyond 7 bits: a pair sum could saturate
    assert packed_for_layer(AVX2, "uint8", w7) is AVX2_U8S8
    assert packed_for_layer(AVX2, "uint8", w8) is AVX2
    assert packed_for_layer(AVX2, "int8", w7) is AVX2  # vpmaddubsw's first operand is unsigned
    assert packed_for_layer(VNNI, "uint8", w7) is VNNI and packed_for_layer(None, "uint8", w7) is None


@pytest.mark.parametrize("shape_a, n", [((1, 12, 128, 64), 128), ((1, 4, 32, 16), 32), ((2, 3, 8, 6), 24)])
def test_avx2_pair_kernel_multiplies_two_activations_exactly(shape_a, n):
    """Attention's u8 x u8 matmuls: (a - za) widened to int16, (b - zb) packed per head at run time by the
    same Relax ops the build emits (_pack_relax), on vpmaddwd; equal to numpy's int32 matmul of the
    zero-point-shifted operands at the extremes (pair sums up to 2 x 255 x 255 fit int32)."""
    from tvm import relax

    from squeezeedge.lowering.int8 import _pack_relax, _te_packed_pair

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2})
    mod, counts = default_schedules(tvm.IRModule({"main": _te_packed_pair(shape_a, n, "main", AVX2)}), target)
    assert counts == {"tensorized": 1, "tiled": 0, "parallel": 0, "naive": 0}
    lib = tvm.tirx.build(mod, target=target)
    assert "vpmaddwd" in lib.inspect_source("asm")
    shape_b = (*shape_a[:-2], shape_a[-1], n)
    bb = relax.BlockBuilder()
    b_var = relax.Var("b", relax.TensorType(shape_b, "uint8"))
    with bb.function("pack", [b_var]):
        bb.emit_func_output(_pack_relax(b_var, shape_b, AVX2, zero=200))
    pack = tvm.compile(bb.get(), target="llvm")
    if "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU cannot run AVX2 code (the code generation above was still checked)")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, shape_a).astype(np.uint8)
    b = rng.integers(0, 256, shape_b).astype(np.uint8)
    a[..., 0, :], b[..., :, 0] = 255, 255  # the largest products all along one output
    a[..., 1, :], b[..., :, 1] = 0, 0  # and the largest shifted ones: (0 - 255) x (0 - 200)
    packed = relax.VirtualMachine(pack, tvm.cpu())["pack"](tvm.runtime.tensor(b))
    y = tvm.runtime.tensor(np.zeros((*shape_a[:-1], n), np.int32))
    lib["main"](tvm.runtime.tensor(a.astype(np.int16) - 255), packed, y)
    np.testing.assert_array_equal(y.numpy(), (a.astype(np.int32) - 255) @ (b.astype(np.int32) - 200))


@pytest.mark.parametrize("groups, tile", [(4, (8, None)), (1, (4, 3))])
def test_short_reductions_take_8_row_tiles(groups, tile):
    """K = 192 a group (SqueezeBERT's Q/K/V): 8 rows x 1 vector a tile, the weights streamed half as
    often; K = 768: 4 rows x 3 vectors."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2})
    mod, _ = default_schedules(tvm.IRModule({"main": _te_packed((1, 128, 768), 768, groups, "main", AVX2_U8S8)}),
                               target)
    unrolled = [int(u) for u in re.findall(r"T\.unroll\(T\.int64\((\d+)\)\)", mod["main"].script())]
    rows, columns = tile
    assert rows in unrolled and (columns in unrolled if columns else set(unrolled) == {rows})


@pytest.mark.parametrize("mcpu, instruction, cpu_flag", [("cascadelake", "vpdpbusd", "avx512_vnni"),
                                                         ("haswell", "vpmaddwd", "avx2")])
@pytest.mark.parametrize("za, zb", [(136, 126), (0, 137), (255, 0)])
def test_attention_matmul_of_two_activations_is_tensorized_and_exact(mcpu, instruction, cpu_flag, za, zb):
    """matmul(dequantize(a), dequantize(b)), u8 x u8 as the quantize stage writes attention's Q K^T and P V,
    through integerize, the build's fusion and default schedules: one tensorized kernel on the target's
    instruction (VNNI: a u8, b shifted to s8 and packed at run time, row/column sums correcting the
    zero points), equal to numpy's float64 product of the dequantized operands at the extremes."""
    from tvm import relax

    from squeezeedge.lowering.pipeline import fuse
    from squeezeedge.lowering.int8 import integerize, tensorized_kernels

    target = tvm.target.Target({**TARGET, "mcpu": mcpu})
    shape_a, shape_b, sa, sb = (1, 2, 32, 64), (1, 2, 64, 48), 0.02, 0.03
    bb = relax.BlockBuilder()
    a_var, b_var = relax.Var("a", relax.TensorType(shape_a, "uint8")), relax.Var("b", relax.TensorType(shape_b, "uint8"))
    deq = lambda v, s, z: relax.op.dequantize(v, relax.const(np.float32(s)), relax.const(np.uint8(z)))  # noqa: E731
    with bb.function("main", [a_var, b_var]):
        bb.emit_func_output(relax.op.matmul(deq(a_var, sa, za), deq(b_var, sb, zb)))
    mod, report = integerize(bb.get(), packed=packed_dot_for(target))
    assert report.matmul_activation == 1 and report.instructions == {instruction}
    mod, counts = default_schedules(fuse(mod, target), target)
    (kernel,) = tensorized_kernels(mod)
    assert counts["tensorized"] == 1 and counts["naive"] == 0
    kernel_only = tvm.IRModule({"main": mod[kernel].with_attr("global_symbol", "main")})
    assert instruction in tvm.tirx.build(kernel_only, target=target).inspect_source("asm")
    ex = tvm.compile(mod, target=target)
    if cpu_flag not in open("/proc/cpuinfo").read():
        pytest.skip(f"this CPU has no {cpu_flag} (the code generation above was still checked)")
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, shape_a).astype(np.uint8)
    b = rng.integers(0, 256, shape_b).astype(np.uint8)
    a[..., 0, :], b[..., :, 0] = 255, 255  # the largest products all along one output
    a[..., 1, :], b[..., :, 1] = 0, 0
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    ref = ((a.astype(np.float64) - za) * sa) @ ((b.astype(np.float64) - zb) * sb)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}


@pytest.mark.parametrize("shape, n, groups", [((1, 32, 768), 64, 4), ((1, 16, 64), 8, 1), ((1, 64), 4, 1)])
def test_a72_partial_sums_hold_every_product_once(shape, n, groups):
    """The Cortex-A72's kernels keep 4 partial sums an output, lane j taking k = 2j, 2j+1, 2j+8, 2j+9 of
    each 16 (where the widening multiplies put them) and a block adding the 4: the kernel's own TIR, run
    on x86 without its aarch64 instructions, equals numpy's int32 matmul at s8's extremes (the
    instruction sequence itself is checked against x86 under qemu in tests/deploy/test_cross.py)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-127, 128, (n, shape[-1] // groups)).astype(np.int8)
    x.reshape(-1, shape[-1])[0] = -128
    w[0] = -127
    lib = tvm.tirx.build(tvm.IRModule({"main": _te_packed(shape, n, groups, "main", NEON16)}), target="llvm")
    y = tvm.runtime.tensor(np.zeros((*shape[:-1], n), np.int32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(_pack(w, groups, NEON16)), y)
    np.testing.assert_array_equal(y.numpy(), _reference(x, w, groups))


@pytest.mark.parametrize("shape, n, groups", [((1, 16, 768), 64, 4), ((1, 12, 64), 8, 1)])
def test_a72_four_product_kernel_is_exact_for_7_bit_weights(shape, n, groups):
    """The 7-bit weights' kernel puts four products in an int16 lane (k = i, i+8, i+16, i+24 of each 32):
    at the extremes that still fit (activations -128 against weights -63 and 64 everywhere, and the worst
    lane that fits: three -64 and one -63) it equals numpy's int32 matmul."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-64, 65, (n, shape[-1] // groups)).astype(np.int8)
    x.reshape(-1, shape[-1])[0] = -128
    x.reshape(-1, shape[-1])[1] = 127
    w[0], w[1] = -63, 64
    w[2, [0, 8, 16, 24]] = (-64, -64, -64, -63)  # 128 x 255 = 32640 in one lane
    assert fits_four_products(w) and packed_for_layer(NEON16, "int8", w) is NEON32
    lib = tvm.tirx.build(tvm.IRModule({"main": _te_packed(shape, n, groups, "main", NEON32)}), target="llvm")
    y = tvm.runtime.tensor(np.zeros((*shape[:-1], n), np.int32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(_pack(w, groups, NEON32)), y)
    np.testing.assert_array_equal(y.numpy(), _reference(x, w, groups))


def test_a72_four_products_only_where_no_lane_can_overflow():
    """Four -64 weights in one lane could sum 4 x 8192 = 32768 products (one past int16), 8-bit weights far
    more, and a reduction that is no multiple of 32 has no 32-product step: those layers keep the exact
    two-product kernel (smlal2), and a -128 weight the one-product kernel."""
    w = np.full((4, 64), 64, np.int8)
    assert fits_four_products(w) and packed_for_layer(NEON16, "int8", w) is NEON32
    w[1, [3, 11, 19, 27]] = -64
    assert not fits_four_products(w) and packed_for_layer(NEON16, "int8", w) is NEON16
    assert packed_for_layer(NEON16, "int8", np.full((4, 64), 65, np.int8)) is NEON16
    assert packed_for_layer(NEON16, "int8", np.ones((4, 48), np.int8)) is NEON16
    w[1, 0] = -128
    assert packed_for_layer(NEON16, "int8", w) is NEON


def test_a72_pair_kernel_is_exact_for_two_activations_at_minus_128():
    """The attention's two activations can both be -128 (a pair of such products overflows int16, which
    is why it multiplies each half apart): its partial-sum kernel equals numpy's product there."""
    a = np.full((1, 2, 16, 32), -128, np.int8)
    b = np.full((1, 2, 32, 8), -128, np.int8)
    a[..., 1, :] = np.arange(32) - 16
    lib = tvm.tirx.build(tvm.IRModule({"main": _te_packed_pair(a.shape, 8, "main", NEON)}), target="llvm")
    packed = b.reshape(1, 2, 2, 16, 2, 4).transpose(0, 1, 4, 2, 5, 3)  # [.., N/4, K/16, 4, 16]
    y = tvm.runtime.tensor(np.zeros((1, 2, 16, 8), np.int32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(np.ascontiguousarray(packed)), y)
    np.testing.assert_array_equal(y.numpy(), a.astype(np.int32) @ b.astype(np.int32))


def test_a72_kernels_sum_their_lanes_pairwise_and_fp32_takes_scalars_from_lanes():
    """On the A72 the weight kernels are tensorized onto smull/smlal2/sadalp (7-bit weights: and smlal) and
    their 4-output sums onto addp
    (no transpose of the partial sums: zip/uzp/trn), the attention's onto smull2; an fp32 convolution's
    broadcast weights come from vector lanes (fmla's indexed form) with no scalar loads in its loop."""
    target = tvm.target.Target(A72)

    def asm(func):
        """The kernel's own code (its compute function: not the FFI wrapper's argument checks)."""
        mod, counts = default_schedules(tvm.IRModule({"main": func}), target)
        assert counts["naive"] == 0
        code = tvm.tirx.build(mod, target=target).inspect_source("asm")
        return code[code.index("main_compute_:"):]

    for spec, mnemonics in ((NEON16, {"smull", "smlal2"}), (NEON32, {"smull", "smlal2", "smlal"})):
        code = asm(_te_packed((1, 32, 768), 768, 4, "main", spec))
        ops = {line.split()[0] for line in code.splitlines() if line.startswith("\t") and line.split()}
        assert mnemonics | {"sadalp", "addp"} <= ops and not ops & {"zip1", "zip2", "uzp1", "uzp2", "trn1", "trn2"}
    pair = asm(_te_packed_pair((1, 2, 32, 64), 32, "main", NEON))
    assert "\tsmull2\t" in pair and "\tsadalp\t" in pair

    from tvm import te

    x = te.placeholder((1, 192, 64), "float32", name="x")
    w = te.placeholder((96, 192, 1), "float32", name="w")
    k = te.reduce_axis((0, 192), "k")
    y = te.compute((1, 96, 64), lambda b, o, s: te.sum(x[b, k, s] * w[o, k, 0], axis=k), name="conv1d")
    fp32 = asm(te.create_prim_func([x, w, y]))
    assert re.search(r"\tfmla\tv\d+\.4s, v\d+\.4s, v\d+\.s\[[123]\]", fp32)  # lanes 1-3: one load served 4 steps


def _hot_loop(code: str, mnemonic: str) -> str:
    """The loop (a label to the branch back to it) densest in ``mnemonic``: a kernel's innermost reduction."""
    loops = []
    for m in re.finditer(r"^(\.LBB\w+):\n", code, re.M):
        back = re.search(rf"^\t(?:b\.\w+|cbnz\t\w+,|cbz\t\w+,)\s*{re.escape(m.group(1))}\n", code[m.end():], re.M)
        if back:
            loops.append(code[m.end():m.end() + back.start()])
    return max(loops, key=lambda body: body.count(f"\t{mnemonic}\t") / body.count("\n"))


@pytest.mark.parametrize("mcpu, shape, mnemonic", [("cortex-a72", (1, 16, 3072), "sadalp"),
                                                   ("cortex-a76", (1, 16, 768), "sdot"),
                                                   ("cortex-a76", (1, 16, 3072), "sdot")])
def test_board_kernels_load_their_activation_rows_in_pairs(mcpu, shape, mnemonic):
    """Each row tile's activations are copied once to a buffer where a reduction step's rows sit side by
    side (schedules._pack_rows), and the A76's grouped weights have its tile's two columns side by side
    in each k block (PackedDot.interleave): the reduction loop loads in pairs (ldp), where rows K bytes
    apart (768 and 3072 here: the FFN's layers) and the second column's weights 4 K / G bytes away (3,072
    at K / G = 768) took single loads past ldp's 1,008-byte reach. LLVM leaves a stray single load or two
    in the A76's 4-step loop: at least 8 pairs a single."""
    from squeezeedge.lowering.int8 import SDOT

    a76 = mcpu == "cortex-a76"
    target = tvm.target.Target(A72 | {"mcpu": mcpu, "mattr": ["+neon"] + (["+dotprod"] if a76 else [])})
    func = _te_packed(shape, 768, 4, "main", SDOT if a76 else NEON32)
    mod, counts = default_schedules(tvm.IRModule({"main": func}), target)
    assert counts["tensorized"] == 1
    code = tvm.tirx.build(mod, target=target).inspect_source("asm")
    loop = _hot_loop(code[code.index("main_compute_:"):], mnemonic)
    pairs, singles = loop.count("\tldp\tq"), loop.count("\tldr\tq")
    assert loop.count(f"\t{mnemonic}\t") >= 32 and pairs >= 8 * max(singles, 1)


@pytest.mark.parametrize("tokens, rows", [(12, 6), (16, 8), (20, 5)])
def test_sdot_row_tiles_take_the_most_rows_that_divide_the_bucket(tokens, rows):
    """The A76's 8 x 2 sdot tiles: a bucket 8 rows do not divide takes the most rows that do (12 -> 6, 20 ->
    5, where both took 4: A76 static 33.50 -> 31.63 M at 12 tokens, 55.78 -> 54.14 M at 20), and the
    reduction loop runs 4 steps a trip (16 products each): rows x 2 columns x 4 lanes x 4 steps sdot."""
    from squeezeedge.lowering.int8 import SDOT

    target = tvm.target.Target(A72 | {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]})
    func = _te_packed((1, tokens, 768), 768, 4, "main", SDOT)
    mod, counts = default_schedules(tvm.IRModule({"main": func}), target)
    assert counts["tensorized"] == 1
    code = tvm.tirx.build(mod, target=target).inspect_source("asm")
    assert _hot_loop(code[code.index("main_compute_:"):], "sdot").count("\tsdot\t") == rows * 2 * 4 * 4


def test_long_reductions_take_the_4_row_sdot_layout_and_are_exact():
    """Layers reducing over more than LONG_K a group (SqueezeBERT's residual layers, 768) take SDOT_ROWS, its
    weights 3 instructions' outputs side by side (ungrouped too); shorter ones keep SDOT. The kernel's own
    TIR on that layout, run on x86 without the aarch64 instructions, equals numpy's int32 matmul at s8's
    extremes (the instructions themselves are checked against x86 under qemu in tests/deploy/test_cross.py)."""
    from squeezeedge.lowering.int8 import LONG_K, SDOT, SDOT_ROWS

    rng = np.random.default_rng(11)
    for kg, rows, want in ((LONG_K, 16, SDOT), (LONG_K + 4, 16, SDOT_ROWS), (LONG_K + 4, 128, SDOT_ROWS),
                           (LONG_K + 4, 14, SDOT), (LONG_K + 4, 12, SDOT), (LONG_K + 4, 1, SDOT)):
        assert packed_for_layer(SDOT, "int8", np.zeros((48, kg), np.int8), rows) is want
    for shape, n, groups in (((1, 8, 1536), 48, 1), ((1, 4, 3072), 96, 4)):
        x = rng.integers(-128, 128, shape).astype(np.int8)
        w = rng.integers(-127, 128, (n, shape[-1] // groups)).astype(np.int8)
        x.reshape(-1, shape[-1])[0], w[0] = -128, -127
        packed = _pack(w, groups, SDOT_ROWS)
        assert packed.shape == (groups, n // groups // 12, shape[-1] // groups // 4, 12, 4)
        lib = tvm.tirx.build(tvm.IRModule({"main": _te_packed(shape, n, groups, "main", SDOT_ROWS)}), target="llvm")
        y = tvm.runtime.tensor(np.zeros((*shape[:-1], n), np.int32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), y)
        np.testing.assert_array_equal(y.numpy(), _reference(x, w, groups))


A76 = A72 | {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}


@pytest.mark.parametrize("tokens, groups", [(16, 4), (128, 4), (16, 1), (128, 1)])
def test_4_row_sdot_tiles_load_2_rows_vectors_and_3_weight_vectors_a_step(tokens, groups):
    """SDOT_ROWS on the A76: 8 x 3 tiles, each reduction step 24 sdot (lanes 0-3 of 2 activation vectors,
    each 4 rows' 4 bytes) against 3 weight vectors, 16 steps a loop trip, its loads paired (2 steps' 5 vectors
    in 3 ldp and an ldr at most), the reduction steps in descending order (:func:`_te_packed`) so that LLVM
    addresses them from a pointer it counts down; each row tile's activations packed by word transposes (zip1 /
    zip2 on .4s, then on .2d, LLVM's zip1 there an insert of the low half), not byte moves."""
    from squeezeedge.lowering.int8 import SDOT_ROWS

    target = tvm.target.Target(A76)
    func = _te_packed((1, tokens, 768 * groups), 768, groups, "main", SDOT_ROWS)
    mod, counts = default_schedules(tvm.IRModule({"main": func}), target)
    assert counts["tensorized"] == 1
    code = tvm.tirx.build(mod, target=target).inspect_source("asm")
    code = code[code.index("main_compute_:"):]
    loop = _hot_loop(code, "sdot")
    assert loop.count("\tsdot\t") == 8 * 3 * 16 and re.search(r"\tsdot\tv\d+\.4s, v\d+\.16b, v\d+\.4b\[3\]", loop)
    pairs, singles = loop.count("\tldp\tq"), loop.count("\tldr\tq")
    assert pairs >= 40 and pairs + singles <= 48
    assert re.search(r"\tzip1\tv\d+\.4s", code) and re.search(r"\tzip2\tv\d+\.4s", code)
    assert re.search(r"\tzip2\tv\d+\.2d", code) and re.search(r"\tmov\tv\d+\.d\[1\], v\d+\.d\[0\]", code)  # zip1 .2d
    assert not re.search(r"\tstr\tb\d+", code)
