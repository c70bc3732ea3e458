"""CPU dot-product tensor intrinsics: x86 VNNI fixed for the wheel's LLVM (>= 21), and two for AVX2.

Import this module before tuning, applying a database or building (it also registers TVM's own ARM
sdot/udot intrinsics, which import with the tensor_intrin package).

TVM 0.27 registers ``dot_16x4_vnni`` calling llvm.x86.avx512.vpdpbusd.512 with <16 x i32> operands; LLVM
now declares that intrinsic on <64 x i8> operands, so every tensorized candidate fails to build ("Call
parameter type does not match function signature"). Re-register the same name, same description, with
byte-vector operands.

TVM has no AVX2 integer dot product. ``dot_8x2_i16i16i32_avx2`` is one: 8 int32 outputs, each adding two
int16 x int16 products (vpmaddwd), for CPUs without VNNI. It is exact for 8-bit inputs widened to int16,
unlike vpmaddubsw, whose int16 pair sums saturate.

``dot_8x4_u8s8s32_avx2`` is the faster one where the weights allow it: 8 int32 outputs, each adding four
u8 x s8 products (vpmaddubsw into int16 pair sums, then vpmaddwd by ones into int32). A pair sum of u8
activations and weights in [-64, 64] is at most 255 * 64 * 2 = 32640, so it cannot saturate: exact for
7-bit weights (onnxruntime's reduce_range). On Zen 3 this pair of instructions issues about once a
cycle, twice the products of vpmaddwd alone (measured with a register-only loop: 2.96 G pairs/s against
3.20 G vpmaddwd/s per core).

``dot_4x16_i8i8s32_sdot`` is sdot's indexed form over the weights TVM's ``dot_4x4_i8i8s32_sdot`` reads
(packed [.., N/4, K/4, 4, 4]): 16 activations loaded once, lane j (4 of them) against weight block j, four
sdot a step. The 4 x 4 one broadcasts 4 activations per instruction, a load (and an address) each.

``dot_16_lanes_i8i8s32_neon`` and ``..._pair_...`` are for the Cortex-A72, which has no dot product: one
output's 16 products a step into 4 int32 partial sums that stay in a register for the whole reduction
(smull + smlal2 + sadalp, 3 instructions; 4 for two activations, which may both be -128), the 4 added
once per output at the end. A 4-output block instead pays the pairwise adds (saddlp, addp) every step.
``dot_32_lanes_i8i8s32_neon`` puts four products in each int16 lane before sadalp (smull, smlal2, smlal,
smlal2): 32 products in 5 instructions, exact for 7-bit weights (the Pi 4 preset).
"""

from __future__ import annotations

import contextlib
import inspect


@contextlib.contextmanager
def _memo_getmodule():
    """Importing tvm.s_tir.tensor_intrin parses ~500 TVMScript functions; each @T.prim_func calls
    inspect.stack(), and for every frame without a real file (importlib's) inspect.getmodule scans all
    of sys.modules: 50-80 s per process once torch and onnx are loaded. For such frames the answer
    depends on the file name alone, so remember it while the import runs (measured: 54 s -> 4 s)."""
    orig, memo = inspect.getmodule, {}

    def getmodule(obj, _filename=None):
        if _filename is None or inspect.ismodule(obj) or hasattr(obj, "__module__"):
            return orig(obj, _filename)
        if _filename not in memo:
            memo[_filename] = orig(obj, _filename)
        return memo[_filename]

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = orig


with _memo_getmodule():
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import arm_cpu  # noqa: F401  (registers dot_4x4_i8i8s32_sdot)
    from tvm.s_tir.tensor_intrin.x86 import VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc
    from tvm.script import tirx as T


# Every intrinsic below is one expression: a named vector in TVMScript (``a = A.vload(...)``) lowers to a
# workspace allocation (TVMBackendAllocWorkspace) per row tile of the kernel that uses it: 6,058 calls an
# inference on the A72 at 16 tokens (1.3 M instructions, results/PERFORMANCE-LOG.md 48). The expressions
# are registers.
def _broadcast_word(A, word: str, copies: int, dtype: str):
    """A's first 4 bytes (``word``, e.g. uint8x4) as one 32-bit value copied ``copies`` times, as ``dtype``."""
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], word), dtype="int32"), copies), dtype=dtype)


@T.prim_func(s_tir=True)
def _dot_product_16x4_u8i8i32_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
            _broadcast_word(A, "uint8x4", 16, "uint8x64"), B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


TensorIntrin.register(VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc, _dot_product_16x4_u8i8i32_vnni,
                      override=True)


AVX2_DOT_8x2_INTRIN = "dot_8x2_i16i16i32_avx2"


@T.prim_func(s_tir=True)
def _dot_8x2_i16_desc(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_8x2_i16_avx2(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), _broadcast_word(A, "int16x2", 8, "int16x16"),
            B.vload([0, 0], dtype="int16x16"), dtype="int32x8")


TensorIntrin.register(AVX2_DOT_8x2_INTRIN, _dot_8x2_i16_desc, _dot_8x2_i16_avx2, override=True)


AVX2_DOT_8x4_INTRIN = "dot_8x4_u8s8s32_avx2"


@T.prim_func(s_tir=True)
def _dot_8x4_u8s8_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_8x4_u8s8_avx2(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), _broadcast_word(A, "uint8x4", 8, "uint8x32"),
                B.vload([0, 0], dtype="int8x32"), dtype="int16x16"), T.broadcast(T.int16(1), 16), dtype="int32x8")


TensorIntrin.register(AVX2_DOT_8x4_INTRIN, _dot_8x4_u8s8_desc, _dot_8x4_u8s8_avx2, override=True)


def _neon(name: str, *args, dtype: str):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon." + name), *args, dtype=dtype)


def _smull(A, B, at: int, half: str):
    """smull of the low or high 8 bytes of A's and B's 16 at ``at``: 8 int16 products."""
    part = T.vectorlow if half == "low" else T.vectorhigh
    return _neon("smull.v8i16", part(A.vload([at], "int8x16"), dtype="int8x8"),
                 part(B.vload([at], "int8x16"), dtype="int8x8"), dtype="int16x8")


# The A72 (no dot product): 16 products of one output a step into 4 int32 partial sums of their own,
# kept for the whole reduction and added once at the end (the kernel's lane-sum block). Lane j of the
# partial sums gets the products at k = 2j, 2j+1, 2j+8, 2j+9 of each 16: where widening multiplies
# (smull, of the low 8 bytes; smull2/smlal2, of the high 8) put them, and saddlp/sadalp pairs them.
NEON_LANES_INTRIN = "dot_16_lanes_i8i8s32_neon"  # smull + smlal2 (int16 pair sums), sadalp: 3 instructions
NEON_LANES_PAIR_INTRIN = "dot_16_lanes_pair_i8i8s32_neon"  # smull, smull2, 2 sadalp: 4, exact for any s8


def _lanes_desc_of(k: int):
    """The A72 kernels' description: k products of one output into 4 partial sums, lane j taking the k at
    2j, 2j+1 of each 8 (as smull/smlal(2) and saddlp/sadalp put them)."""
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((k,), "int8", offset_factor=1),
        B: T.Buffer((k,), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:k], B[0:k])
            T.writes(C[0:4])
            for j, t in T.grid(4, k // 4):
                with T.sblock("update"):
                    vj, vt = T.axis.remap("SR", [j, t])
                    C[vj] = C[vj] + T.cast(A[vj * 2 + vt % 2 + vt // 2 * 8], "int32") \
                        * T.cast(B[vj * 2 + vt % 2 + vt // 2 * 8], "int32")
    return desc


_lanes_desc = _lanes_desc_of(16)


@T.prim_func(s_tir=True)
def _lanes_neon(
    A: T.Buffer((16,), "int8", offset_factor=1),
    B: T.Buffer((16,), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:16], B[0:16])
        T.writes(C[0:4])
        # a pair of products in int16 is exact while no weight is -128: |(-128)(-127)| x 2 < 2^15
        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") + _neon(
            "saddlp.v4i32.v8i16", _smull(A, B, 0, "low") + _smull(A, B, 0, "high"), dtype="int32x4")


@T.prim_func(s_tir=True)
def _lanes_pair_neon(
    A: T.Buffer((16,), "int8", offset_factor=1),
    B: T.Buffer((16,), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:16], B[0:16])
        T.writes(C[0:4])
        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") \
            + _neon("saddlp.v4i32.v8i16", _smull(A, B, 0, "low"), dtype="int32x4") \
            + _neon("saddlp.v4i32.v8i16", _smull(A, B, 0, "high"), dtype="int32x4")


TensorIntrin.register(NEON_LANES_INTRIN, _lanes_desc, _lanes_neon, override=True)
TensorIntrin.register(NEON_LANES_PAIR_INTRIN, _lanes_desc, _lanes_pair_neon, override=True)

# 32 products a step, four in each int16 lane (smull, smlal2, smlal, smlal2) before sadalp: 5 instructions
# for 32 products, not 6. int16 lane i holds the products at k = i, i+8, i+16, i+24; its adds wrap, so the
# result is exact whenever the four products' true sum fits int16, which int8.fits_four_products checks on
# the layer's weights (7-bit weights, |w| <= 64, always fit unless four are -64 in one lane).
NEON_LANES_QUAD_INTRIN = "dot_32_lanes_i8i8s32_neon"


@T.prim_func(s_tir=True)
def _lanes_quad_neon(
    A: T.Buffer((32,), "int8", offset_factor=1),
    B: T.Buffer((32,), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:32], B[0:32])
        T.writes(C[0:4])
        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") + _neon(
            "saddlp.v4i32.v8i16", _smull(A, B, 0, "low") + _smull(A, B, 0, "high") + _smull(A, B, 16, "low")
            + _smull(A, B, 16, "high"), dtype="int32x4")


TensorIntrin.register(NEON_LANES_QUAD_INTRIN, _lanes_desc_of(32), _lanes_quad_neon, override=True)

# The 4 partial sums of 4 outputs added: two levels of pairwise adds (3 addp), not a 4 x 4 transpose
NEON_LANES_SUM_INTRIN = "sum_4x4_lanes_i32_neon"


@T.prim_func(s_tir=True)
def _lanes_sum_desc(P: T.Buffer((4, 4), "int32", offset_factor=1), Y: T.Buffer((4,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(P[0:4, 0:4])
        T.writes(Y[0:4])
        for i in T.serial(0, 4):
            with T.sblock("update"):
                vi = T.axis.remap("S", [i])
                Y[vi] = P[vi, T.int64(0)] + P[vi, T.int64(1)] + P[vi, T.int64(2)] + P[vi, T.int64(3)]


@T.prim_func(s_tir=True)
def _lanes_sum_neon(P: T.Buffer((4, 4), "int32", offset_factor=1), Y: T.Buffer((4,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(P[0:4, 0:4])
        T.writes(Y[0:4])
        Y[T.ramp(T.int32(0), 1, 4)] = _neon("addp.v4i32", _neon(
            "addp.v4i32", P.vload([0, 0], dtype="int32x4"), P.vload([1, 0], dtype="int32x4"), dtype="int32x4"), _neon(
            "addp.v4i32", P.vload([2, 0], dtype="int32x4"), P.vload([3, 0], dtype="int32x4"), dtype="int32x4"),
            dtype="int32x4")


TensorIntrin.register(NEON_LANES_SUM_INTRIN, _lanes_sum_desc, _lanes_sum_neon, override=True)


SDOT_4x16_INTRIN = "dot_4x16_i8i8s32_sdot"


def _lane(A, j: int):
    """Lane j (4 bytes) of A's 16, copied to all 4 lanes."""
    return T.reinterpret(T.Shuffle([T.reinterpret(A.vload([0] * len(A.shape), "int8x16"), dtype="int32x4")], [j] * 4),
                         dtype="int8x16")


_SDOT = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8")


# B's k blocks are B.strides[0] bytes apart: 16 in TVM's layout, 16 x PackedDot.interleave in a weight
# layout that puts two instructions' outputs side by side (compiler/lowering/int8.py)
@T.prim_func(s_tir=True)
def _sdot_4x16_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (16,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4, 4), "int8", offset_factor=1, strides=[T.int32(), 4, 1])
    C = T.match_buffer(c, (4,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:16], B[0:4, 0:4, 0:4])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for k in T.serial(0, 16):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vk // 4, vi, vk % 4], "int32")


@T.prim_func(s_tir=True)
def _sdot_4x16_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (16,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4, 4), "int8", offset_factor=1, strides=[T.int32(), 4, 1])
    C = T.match_buffer(c, (4,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:16], B[0:4, 0:4, 0:4])
        T.writes(C[0:4])
        # lane j of A (4 activations) against the weights' k block j: LLVM selects sdot's indexed form
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(_SDOT, T.call_llvm_pure_intrin(_SDOT,
            T.call_llvm_pure_intrin(_SDOT, T.call_llvm_pure_intrin(_SDOT, C.vload([0], dtype="int32x4"),
            B.vload([0, 0, 0], dtype="int8x16"), _lane(A, 0),
            dtype="int32x4"),
            B.vload([1, 0, 0], dtype="int8x16"), _lane(A, 1),
            dtype="int32x4"),
            B.vload([2, 0, 0], dtype="int8x16"), _lane(A, 2),
            dtype="int32x4"),
            B.vload([3, 0, 0], dtype="int8x16"), _lane(A, 3),
            dtype="int32x4")


TensorIntrin.register(SDOT_4x16_INTRIN, _sdot_4x16_desc, _sdot_4x16_impl, override=True)


SDOT_ROWS_INTRIN = "dot_4rows_i8i8s32_sdot"


# 4 rows x 4 outputs x 4 products: A is 4 rows' 4 activations (16 bytes, a row a lane), B one weight block (4
# outputs' 4 weights); row r's outputs take lane r of A. A tile's reduction step then loads 2 activation
# vectors for 8 rows and 3 weight vectors for 12 outputs: 8 x 3 tiles in 29 registers
@T.prim_func(s_tir=True)
def _sdot_rows_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4, 4), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
    C = T.match_buffer(c, (4, 4), "int32", offset_factor=1, strides=[T.int32(), 1])
    with T.sblock("root"):
        T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
        T.writes(C[0:4, 0:4])
        for i in T.serial(0, 4):
            for j in T.serial(0, 4):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                        C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "int32") * T.cast(B[vj, vk], "int32")


@T.prim_func(s_tir=True)
def _sdot_rows_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4, 4), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
    C = T.match_buffer(c, (4, 4), "int32", offset_factor=1, strides=[T.int32(), 1])
    with T.sblock("root"):
        T.reads(C[0:4, 0:4], A[0:4, 0:4], B[0:4, 0:4])
        T.writes(C[0:4, 0:4])
        C[0, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(_SDOT, C.vload([0, 0], dtype="int32x4"),
                                                                  B.vload([0, 0], dtype="int8x16"), _lane(A, 0),
                                                                  dtype="int32x4")
        C[1, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(_SDOT, C.vload([1, 0], dtype="int32x4"),
                                                                  B.vload([0, 0], dtype="int8x16"), _lane(A, 1),
                                                                  dtype="int32x4")
        C[2, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(_SDOT, C.vload([2, 0], dtype="int32x4"),
                                                                  B.vload([0, 0], dtype="int8x16"), _lane(A, 2),
                                                                  dtype="int32x4")
        C[3, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(_SDOT, C.vload([3, 0], dtype="int32x4"),
                                                                  B.vload([0, 0], dtype="int8x16"), _lane(A, 3),
                                                                  dtype="int32x4")


TensorIntrin.register(SDOT_ROWS_INTRIN, _sdot_rows_desc, _sdot_rows_impl, override=True)


PACK_ROWS_INTRIN = "pack_4rows_i8_words"


# The activations' copy for SDOT_ROWS_INTRIN: 4 rows' 16 bytes (4 reduction steps) -> 4 vectors of the 4 rows'
# 4 bytes of one step, a 4 x 4 transpose of 32-bit words (zip1 / zip2 on words, then on doublewords)
@T.prim_func(s_tir=True)
def _pack_rows_desc(x: T.handle, p: T.handle) -> None:
    X = T.match_buffer(x, (4, 16), "int8", offset_factor=1, strides=[T.int32(), 1])
    P = T.match_buffer(p, (4, 4, 4), "int8", offset_factor=1, strides=[T.int32(), 4, 1])
    with T.sblock("root"):
        T.reads(X[0:4, 0:16])
        T.writes(P[0:4, 0:4, 0:4])
        for r in T.serial(0, 4):
            for t in T.serial(0, 4):
                for j in T.serial(0, 4):
                    with T.sblock("copy"):
                        vr = T.axis.spatial(4, r)
                        vk = T.axis.spatial(16, t * 4 + j)
                        P[vk // 4, vr, vk % 4] = X[vr, vk]


def _words(X, r: int):
    return T.reinterpret(X.vload([r, 0], "int8x16"), dtype="int32x4")


def _zip_words(a, b, high: int):
    return T.Shuffle([a, b], [2 * high, 4 + 2 * high, 2 * high + 1, 5 + 2 * high])


def _zip_doubles(a, b, high: int):
    return T.reinterpret(T.Shuffle([a, b], [2 * high, 2 * high + 1, 4 + 2 * high, 5 + 2 * high]), dtype="int8x16")


@T.prim_func(s_tir=True)
def _pack_rows_impl(x: T.handle, p: T.handle) -> None:
    X = T.match_buffer(x, (4, 16), "int8", offset_factor=1, strides=[T.int32(), 1])
    P = T.match_buffer(p, (4, 4, 4), "int8", offset_factor=1, strides=[T.int32(), 4, 1])
    with T.sblock("root"):
        T.reads(X[0:4, 0:16])
        T.writes(P[0:4, 0:4, 0:4])
        P[0, 0, T.ramp(T.int32(0), 1, 16)] = _zip_doubles(_zip_words(_words(X, 0), _words(X, 1), 0),
                                                           _zip_words(_words(X, 2), _words(X, 3), 0), 0)
        P[1, 0, T.ramp(T.int32(0), 1, 16)] = _zip_doubles(_zip_words(_words(X, 0), _words(X, 1), 0),
                                                           _zip_words(_words(X, 2), _words(X, 3), 0), 1)
        P[2, 0, T.ramp(T.int32(0), 1, 16)] = _zip_doubles(_zip_words(_words(X, 0), _words(X, 1), 1),
                                                           _zip_words(_words(X, 2), _words(X, 3), 1), 0)
        P[3, 0, T.ramp(T.int32(0), 1, 16)] = _zip_doubles(_zip_words(_words(X, 0), _words(X, 1), 1),
                                                           _zip_words(_words(X, 2), _words(X, 3), 1), 1)


TensorIntrin.register(PACK_ROWS_INTRIN, _pack_rows_desc, _pack_rows_impl, override=True)
