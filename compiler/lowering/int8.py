"""Real integer compute for QDQ models in TVM Relax.

TVM 0.27's ONNX importer turns QuantizeLinear/DequantizeLinear into relax.quantize/relax.dequantize,
which legalize to float arithmetic: an imported QDQ model multiplies in float. This pass rewrites

    conv1d(dequantize(xq), dequantize(Wq))              SqueezeBERT's grouped 1x1 convolutions
    matmul(dequantize(xq), [permute_dims](dequantize(Wq)))  the classifier / pooler (Gemm), MatMul weights
    matmul(dequantize(aq), dequantize(bq))              the attention matmuls (activation x activation)

into integer kernels, u8/s8 x s8/u8 -> int32, followed by one fused epilogue: zero-point correction
(precomputed from the constant weights where possible), a float rescale by s_x * s_w, and whatever came
next (bias add, the next layer's quantize). Scales and zero points are the quantize stage's, read from
the graph's constants. Layers whose pattern does not match are left as they are, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from squeezeedge.errors import CompileError
from squeezeedge.lowering.tir_walk import llvm_intrinsics_called, reduction_updates

INT_DTYPES = ("uint8", "int8")
MAC_KERNELS = ("conv1d", "matmul", "vnni_dot", "arm_sdot", "arm_sdot_rows", "arm_neon_dot", "arm_neon_k16", "arm_neon_k32", "avx2_madd", "avx2_u8s8")  # names of multiply-accumulate kernels


@dataclass
class RewriteReport:
    conv1d: int = 0
    matmul_weight: int = 0
    matmul_activation: int = 0
    packed: int = 0  # distinct pre-packed dot-product kernels emitted
    instructions: set[str] = field(default_factory=set)  # what those kernels tensorize onto
    lookup_tables: int = 0  # elementwise functions between dequantize and quantize (compiler/lowering/lookup.py)
    round_trips_dropped: int = 0  # dequantize -> reshape/transpose -> quantize (compiler/lowering/round_trips.py)
    epilogues_folded: int = 0  # quantize(a * acc + b) as one multiply-add (compiler/lowering/requantize.py)
    scale_chains_folded: int = 0  # a * float(acc) + b in one multiply before a tensor's add (compiler/lowering/requantize.py)
    gelus_folded: int = 0  # quantize(GELU(a * acc + b)) with its constants folded (compiler/lowering/gelu_quantize.py)
    gelus_narrowed: int = 0  # sdot sums into the float16 GELU through int16 (compiler/lowering/gelu_quantize.py)
    softmax_folded: int = 0  # quantize(softmax(x)) dividing once a row (compiler/lowering/softmax_quantize.py)
    layer_norms_folded: int = 0  # quantize(layer_norm(x)) with 1/s in its constants (compiler/lowering/layer_norm_quantize.py)
    accumulator_biases: int = 0  # sdot kernels whose sums start at the bias (compiler/lowering/accumulator_bias.py)
    operands_zip_packed: int = 0  # attention K / V packed for sdot by zips (compiler/lowering/zip_packing.py)
    skipped: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.conv1d + self.matmul_weight + self.matmul_activation


def _np(expr) -> np.ndarray:
    return expr.value.numpy()


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _scalar_zp(zp: np.ndarray) -> int | None:
    """An activation zero point as one int, or None if it varies per channel (not expected for QDQ)."""
    flat = zp.reshape(-1).astype(np.int64)
    return int(flat[0]) if np.all(flat == flat[0]) else None


def _dq_pattern(data):
    return is_op("relax.dequantize")(data, is_const(), is_const())


@dataclass(frozen=True)
class PackedDot:
    """A CPU dot-product instruction and the weight layout it wants: ``lanes`` int32 outputs, each summing
    ``k`` products of consecutive activations x weights. Weights are pre-packed [G, N/G/lanes, K/G/k,
    lanes, k] so the innermost lanes x k block is one contiguous vector load (see :func:`pack`)."""
    block: str  # the kernel's compute block; also names its PrimFuncs (tuning selects them by it)
    lanes: int
    k: int
    accepts: tuple[str, ...]  # quantized activation dtypes this instruction serves
    x_dtype: str  # what the kernel reads (activations are cast to it in the graph when they differ)
    w_dtype: str
    intrin: str  # the registered TensorIntrin
    instruction: str  # the mnemonic in the generated assembly
    # rows x instruction columns of a register tile for every reduction length (None: the schedule's rule).
    # sdot's 4 x 4 form: 8 x 4, the fewest instructions counted on the full model's Pi 5 library; the A72's
    # one-output kernels: 4 rows x 4 outputs (results/PERFORMANCE-LOG.md)
    tile: tuple[int, int] | None = None
    # (k, intrin, tile, unroll): a longer step on the same weight layout where the reduction divides by k,
    # its loop unrolled ``unroll`` steps (or the most that divide it). sdot's indexed form: one 16-byte
    # activation load serves 4 instructions (lane j against k block j), 8 x 2 tiles (16 accumulators; 8 x 3
    # spills them), unrolled 4 steps: the fewest instructions counted (static 16 tokens, A76: 2 steps
    # 41.26 M, 4 40.85 M, 6 40.90 M, 12 41.97 M; results/PERFORMANCE-LOG.md)
    wide: tuple[int, str, tuple[int, int], int] | None = None
    # > 0: one output a step, into this many partial sums of its own kept for the whole reduction and
    # added at the end (the A72's NEON kernels, see compiler/lowering/intrinsics.py). Their ``lanes`` (4)
    # is the weight layout's alone: a 4 x 4 tile's 4 outputs have their k steps side by side, one run of
    # 64 or 128 bytes (paired loads) where they were K bytes apart (A72 at 16 tokens: 93.4 -> 92.5 M)
    partial: int = 0
    # > 1: the weight layout puts this many instructions' outputs side by side in each k block ([G,
    # N/G/(lanes x interleave), K/G/k, lanes x interleave, k]): a 2-column tile's weights for a reduction
    # step then sit in one run (paired loads), where the second column's were K x lanes bytes away, past
    # ldp's reach for K = 768 (sdot, 8 x 2 tiles). Weight layers only (run-time packed operands keep
    # ``lanes``); the ungrouped 768 x 768 layer's steps descend (:func:`_te_packed`: ascending, LLVM's loop
    # strength reduction put its offsets past ldp's reach: A76 16 tokens 8.66 -> 9.30 M)
    interleave: int = 1
    # > 0: the instruction computes this many rows (:data:`SDOT_ROWS`), each from a lane of one activation
    # vector (a kernel's rows a multiple of twice this: :func:`packed_for_layer`)
    row_block: int = 0

    def block_lanes(self, groups: int) -> int:
        """Outputs side by side in a packed weight's k block, for a layer of ``groups`` groups."""
        return self.lanes * self.interleave


VNNI = PackedDot("vnni_dot", 16, 4, ("uint8",), "uint8", "int8", "dot_16x4_vnni", "vpdpbusd")
SDOT = PackedDot("arm_sdot", 4, 4, ("int8",), "int8", "int8", "dot_4x4_i8i8s32_sdot", "sdot", (8, 4),
                 (16, "dot_4x16_i8i8s32_sdot", (8, 2), 4), interleave=2)
# Reductions longer than LONG_K (SqueezeBERT's residual layers, K = 768 a group) in a length bucket of 8-row
# tiles: 4 rows a step from one activation vector, 8 x 3 tiles (24 accumulators), a reduction step's loads 2
# activation and 3 weight vectors, the 3 side by side (interleave 3: 2 steps are 3 paired loads; 10.4% loads
# where SDOT's 8 x 2 took 12.5%); 16 steps a loop trip. Its weights' layout is its own: a bucket of other
# lengths (10, 12, 14, 18, 20, 36) takes SDOT's with its own copy of those layers' weights (on 4-row blocks a
# 14-token bucket had 7 x 3 tiles: A76 33.39 -> 37.50 M; results/PERFORMANCE-LOG.md 54)
LONG_K = 256
SDOT_ROWS = PackedDot("arm_sdot_rows", 4, 4, ("int8",), "int8", "int8", "dot_4rows_i8i8s32_sdot", "sdot", (8, 3),
                      (4, "dot_4rows_i8i8s32_sdot", (8, 3), 16), interleave=3, row_block=4)
# Cores without dot product (Cortex-A72, the Pi 4): each output's 16 products a step widened (smull,
# smull2) into 4 int32 partial sums (sadalp) that stay in a register for the whole reduction, exact for
# any s8 operands (the attention's two activations), 4 instructions a step; 4 x 4 tiles (16 accumulators,
# 4 weight vectors, one activation at a time: 8 x 3 and 4 x 6 spill), the fewest counted on the full model
NEON = PackedDot("arm_neon_dot", 4, 16, ("int8",), "int8", "int8", "dot_16_lanes_pair_i8i8s32_neon", "smull2",
                 (4, 4), partial=4)
# Weight layers there: the products paired in int16 first (smull + smlal2: exact while no weight is -128, as
# symmetric weights never are: |(-128)(-127)| x 2 < 2^15), 3 instructions a step
NEON16 = PackedDot("arm_neon_k16", 4, 16, ("int8",), "int8", "int8", "dot_16_lanes_i8i8s32_neon", "smlal2",
                   (4, 4), partial=4)
# Four products in each int16 lane before sadalp (smull, smlal2, smlal, smlal2): 5 instructions for 32
# products, exact for a layer whose weights keep every lane's four products within int16
# (:func:`fits_four_products`: 7-bit weights do)
NEON32 = PackedDot("arm_neon_k32", 4, 32, ("int8",), "int8", "int8", "dot_32_lanes_i8i8s32_neon", "smlal",
                   (4, 4), partial=4)
# AVX2 has no exact 8-bit dot product (vpmaddubsw's int16 pair sums saturate): widen to int16 and use
# vpmaddwd, 8 outputs x 2 products per instruction, exact for any u8/s8 input.
AVX2 = PackedDot("avx2_madd", 8, 2, ("uint8", "int8"), "int16", "int16", "dot_8x2_i16i16i32_avx2", "vpmaddwd")
# Twice the products per cycle, exact only for weights in [-64, 64] (7-bit, quantize's weight_bits = 7):
# u8 activations x s8 weights, vpmaddubsw's int16 pair sums then cannot saturate. Chosen per layer.
AVX2_U8S8 = PackedDot("avx2_u8s8", 8, 4, ("uint8",), "uint8", "int8", "dot_8x4_u8s8s32_avx2", "vpmaddubsw")
PACKED = (VNNI, SDOT, SDOT_ROWS, NEON, NEON16, NEON32, AVX2, AVX2_U8S8)
SEVEN_BIT = 64  # the largest weight magnitude AVX2_U8S8 is exact for


def packed_for_layer(packed: PackedDot | None, dtype: str, w: np.ndarray, rows: int = 1) -> PackedDot | None:
    """The target's instruction for one layer: on AVX2, u8 activations with 7-bit weights take the
    u8 x s8 instruction; anything else the exact int16 one. Without dot product on aarch64: products
    paired in int16 (smlal2) where no weight is -128, else each half apart (the attention's sequence)."""
    if packed is AVX2 and dtype in AVX2_U8S8.accepts and int(np.abs(w.astype(np.int16)).max()) <= SEVEN_BIT:
        return AVX2_U8S8
    if packed is SDOT and w.shape[1] > LONG_K and rows % (2 * SDOT_ROWS.row_block) == 0:
        return SDOT_ROWS
    if packed is NEON16 and int(w.min()) < -127:
        return NEON
    if packed is NEON16 and fits_four_products(w):
        return NEON32
    return packed


def fits_four_products(w_nk: np.ndarray) -> bool:
    """Whether every int16 lane of :data:`NEON32` (the products at k = i, i+8, i+16, i+24 of each 32 of
    one output) stays within int16 for any s8 activations: the largest sum, -128 or 127 against each
    weight's sign, is at most 32767 and the smallest at least -32768. False where K is not 32s."""
    n, k = w_nk.shape
    if k % 32:
        return False
    w = w_nk.astype(np.int32).reshape(n, k // 32, 4, 8)  # [n, block, quarter, lane]: a lane sums over quarters
    high = np.where(w < 0, -128 * w, 127 * w).sum(axis=2)
    low = np.where(w > 0, -128 * w, -127 * w).sum(axis=2)
    return bool(high.max() <= 32767 and low.min() >= -32768)


def packed_dot_for(tvm_target) -> PackedDot | None:
    """The dot-product instruction an LLVM CPU target has: VNNI, else AVX2 on x86; sdot on aarch64.
    None for GPU targets: their kernels run on the GPU, whatever the host CPU has."""
    if tvm_target.kind.name != "llvm":
        return None
    triple = str(tvm_target.attrs.get("mtriple", "x86_64"))
    has = lambda feature: bool(tvm.target.codegen.llvm_cpu_has_features([feature], tvm_target))  # noqa: E731
    if triple.startswith("x86_64"):
        return VNNI if has("avx512vnni") else AVX2 if has("avx2") else None
    if triple.startswith("aarch64"):
        return SDOT if has("dotprod") else NEON16 if has("neon") else None
    return None


def _i64(*dims):
    return tuple(tvm.tirx.const(d, "int64") for d in dims)  # Relax shapes are int64


def _packed_sum(out_shape: tuple[int, ...], k_all: int, spec: PackedDot, product, init=None):
    """out[..., n] = sum over k of product(lead, n, k, k // spec.k, k % spec.k): the packed kernel's compute,
    each sum started at ``init(n)`` where given (a bias in the accumulator, one-output-a-step kernels only).
    With ``spec.partial``, spec.partial partial sums an output, lane j summing the k of each spec.k-block
    the lane instruction puts there (2j, 2j+1, 2j+8, 2j+9: compiler/lowering/intrinsics.py), and a block
    adding them (named ``spec.block + "_sum"``)."""
    from tvm import te

    if not spec.partial:
        k = te.reduce_axis(_i64(0, k_all), "k")
        return te.compute(_i64(*out_shape), lambda *idx: te.sum(
            product(idx[:-1], idx[-1], k, k // spec.k, k % spec.k), axis=k,
            init=None if init is None else init(idx)), name=spec.block)
    kb, t = te.reduce_axis(_i64(0, k_all // spec.k), "kb"), te.reduce_axis(_i64(0, spec.k // spec.partial), "t")

    def lane(*idx):
        *lead, n, j = idx
        k_in = j * 2 + t % 2 + t // 2 * 8
        return te.sum(product(lead, n, kb * spec.k + k_in, kb, k_in), axis=[kb, t])

    lanes = te.compute(_i64(*out_shape, spec.partial), lane, name=spec.block)
    return te.compute(_i64(*out_shape), lambda *idx: sum(
        (lanes[(*idx, *_i64(j))] for j in range(1, spec.partial)), lanes[(*idx, *_i64(0))]), name=spec.block + "_sum")


def _te_packed(shape_x: tuple[int, ...], n_out: int, groups: int, name: str, spec: PackedDot = VNNI,
               bias: bool = False):
    """x [..., K] x weights pre-packed for ``spec`` -> int32 [..., N]: the layout the dot-product
    instruction wants, so a schedule can tensorize the inner lanes x k block. With ``bias``, a third input,
    int32 [N], starts each output's sum (:mod:`squeezeedge.lowering.accumulator_bias`)."""
    from tvm import te

    *lead, k_all = shape_x
    kg, ng = k_all // groups, n_out // groups
    lanes = spec.block_lanes(groups)
    x = te.placeholder(_i64(*shape_x), spec.x_dtype, name="x")
    w = te.placeholder(_i64(groups, ng // lanes, kg // spec.k, lanes, spec.k), spec.w_dtype, name="w")

    # the ungrouped layer's reduction steps in descending order (each step's 16 k ascending, as the
    # instruction reads them): ascending, LLVM's loop strength reduction addressed its interleaved weights
    # from one base at offsets past ldp's reach (see ``interleave``); counted down, every pair is one ldp
    # (A76 128 tokens: that layer 68.56 -> 66.92 M; the grouped layers gain nothing from it: +0.35 M).
    # Row tiles of the instruction's rows (PackedDot.row_block) count their 4-byte steps down too
    descending = bool(spec.row_block) and (lead[-1] if lead else 1) % spec.row_block == 0
    step = spec.wide[0] if spec.wide and spec.instruction == "sdot" and groups == 1 and kg % spec.wide[0] == 0 \
        and not spec.row_block else 0

    def product(lead_idx, n, k, k_block, k_in):
        g = n // ng
        if step:  # the reduction's steps descending, each step's k ascending
            k = kg - step - k // step * step + k % step
            k_block, k_in = k // spec.k, k % spec.k
        if descending:
            k_block = kg // spec.k - 1 - k_block
            k = k_block * spec.k + k_in
        return x[(*lead_idx, g * kg + k)].astype("int32") \
            * w[g, (n % ng) // lanes, k_block, n % lanes, k_in].astype("int32")

    b = te.placeholder(_i64(n_out), "int32", name="bias") if bias else None
    y = _packed_sum((*lead, n_out), kg, spec, product, None if b is None else lambda idx: b[idx[-1]])
    func = te.create_prim_func([x, w, *([b] if bias else []), y])
    return (_bias_init(func, spec.block) if bias else func).with_attr("global_symbol", name)


def _bias_init(func, block: str, leading: bool = False):
    """``func`` with its reduction block's init ``out[..., n] = 0`` made ``out[..., n] = bias[n]``. TVM 0.27's
    te.create_prim_func drops a reduction's ``init`` (it writes the reducer's identity even for ``init=7``;
    apache/tvm#17301 fixed a sibling case), so the init is rewritten in the function's TVMScript and parsed
    back. The block's declared reads stay the update's (x and w): decompose_reduction gives the update block
    the block's reads, and tensorize matches them against the intrinsic's."""
    import re

    text = func.script()
    init = re.search(rf"\n(\s*)({block}\[([^\]]*)\]) = 0\n", text)
    if init is None:
        raise CompileError(f"{block}: no reduction init to start at the bias")
    index = [v.strip() for v in init.group(3).split(",")]
    at = [*index[:-2], index[-1]] if leading else index[-1:]  # bias [..., N] (no rows' axis), or [N]
    text = text.replace(init.group(0), f"\n{init.group(1)}{init.group(2)} = bias[{', '.join(at)}]\n")
    return tvm.script.from_source(text)


def _te_packed_pair(shape_a: tuple[int, ...], n_out: int, name: str, spec: PackedDot = None, bias: bool = False):
    """a [..., M, K] x b packed per batch entry [..., N/lanes, K/k, lanes, k] -> int32 [..., M, N]: the
    packed kernel for an activation x activation matmul (attention), b packed at run time
    (:func:`_pack_relax`). With ``bias``, a third input, int32 [..., N], starts each output's sum."""
    from tvm import te

    spec = spec or AVX2
    *lead, m, k_all = shape_a
    a = te.placeholder(_i64(*shape_a), spec.x_dtype, name="x")
    w = te.placeholder(_i64(*lead, n_out // spec.lanes, k_all // spec.k, spec.lanes, spec.k), spec.w_dtype, name="w")

    def product(lead_idx, n, k, k_block, k_in):
        *batch, i = lead_idx
        return a[(*batch, i, k)].astype("int32") * w[(*batch, n // spec.lanes, k_block, n % spec.lanes, k_in)].astype("int32")

    b = te.placeholder(_i64(*lead, n_out), "int32", name="bias") if bias else None  # one per head and output
    y = _packed_sum((*lead, m, n_out), k_all, spec, product, None if b is None else lambda idx: b[(*idx[:-2], idx[-1])])
    func = te.create_prim_func([a, w, *([b] if bias else []), y])
    return (_bias_init(func, spec.block, leading=True) if bias else func).with_attr("global_symbol", name)


def _widen(x, dtype: str, zero: int = 0):
    """x cast to ``dtype`` with its zero point subtracted (u8 - z fits int16 exactly)."""
    x = relax.op.astype(x, dtype)
    return relax.op.subtract(x, relax.const(zero, dtype)) if zero else x


def _pack_relax(b, shape: tuple[int, ...], spec: PackedDot, zero: int = 0):
    """Relax ops packing b - zero, b [..., K, N], into [..., N/lanes, K/k, lanes, k] of spec's weight dtype
    (b - zero computed in int16, then narrowed: u8 - 128 fits int8 exactly)."""
    *lead, k, n = shape
    nl = len(lead)
    shifted = b if not zero and _dtype(b) == spec.w_dtype else \
        _widen(b, "int16", zero) if spec.w_dtype == "int8" else _widen(b, spec.w_dtype, zero)
    split = relax.op.reshape(relax.op.astype(shifted, spec.w_dtype), (*lead, k // spec.k, spec.k, n // spec.lanes,
                                                                       spec.lanes))
    return relax.op.permute_dims(split, [*range(nl), nl + 2, nl, nl + 3, nl + 1])


def _zero_points(acc, aq, bq, za: int, zb: int):
    """sum_k (a - za)(b - zb) from acc = sum_k a b: acc - zb rowsum(a) - za colsum(b) + K za zb."""
    k = int(aq.ty.shape[-1])
    if zb:
        rows = relax.op.sum(relax.op.astype(aq, "int32"), axis=[-1], keepdims=True)
        acc = relax.op.subtract(acc, relax.op.multiply(rows, relax.const(zb, "int32")))
    if za:
        cols = relax.op.sum(relax.op.astype(bq, "int32"), axis=[-2], keepdims=True)
        acc = relax.op.subtract(acc, relax.op.multiply(cols, relax.const(za, "int32")))
    if za and zb:
        acc = relax.op.add(acc, relax.const(k * za * zb, "int32"))
    return acc


def _pack(w_nk: np.ndarray, groups: int, spec: PackedDot = VNNI) -> np.ndarray:
    """[N, K/G] per-group weights -> [G, N/G/lanes, K/G/k, lanes, k] (lanes: :meth:`PackedDot.block_lanes`)."""
    n, kg = w_nk.shape
    ng, lanes, k = n // groups, spec.block_lanes(groups), spec.k
    packed = w_nk.reshape(groups, ng // lanes, lanes, kg // k, k).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(packed.astype(spec.w_dtype))


def integerize(mod: tvm.IRModule, func_name: str = "main", packed: PackedDot | None = None,
               report: RewriteReport | None = None) -> tuple[tvm.IRModule, RewriteReport]:
    """Rewrite dequantize -> conv1d/matmul patterns of ``mod[func_name]`` into integer kernels.

    With ``packed`` (the target's dot-product instruction, :func:`packed_dot_for`), weight-stationary
    layers whose activations it accepts use pre-packed weights and a channels-last kernel (see
    :func:`_te_packed`) instead of conv1d/matmul. Counts go to ``report`` (a new one if None).
    """
    rewriter = _Integerizer(mod, packed, report or RewriteReport())
    pat = rewriter.patterns
    func = mod[func_name]
    for pattern, fn in ((pat["conv"], rewriter.conv), (pat["mm_w"], rewriter.matmul_weight),
                        (pat["mm_a"], rewriter.matmul_activation)):
        func = rewrite_call(pattern, fn, func)
    mod = rewriter.builder.get()  # the kernels added
    mod[func_name] = func
    rewriter.report.packed = len(rewriter.kernels)
    return relax.transform.DeadCodeElimination()(mod), rewriter.report


def _patterns() -> dict:
    """The three layer patterns and their parts (dequantized activations x, a, b; constant weight w)."""
    x, a, b = wildcard(), wildcard(), wildcard()
    p = {"x_dq": _dq_pattern(x), "a_dq": _dq_pattern(a), "b_dq": _dq_pattern(b), "w_dq": _dq_pattern(is_const())}
    p["w_t"] = is_op("relax.permute_dims")(p["w_dq"])
    p["conv"] = is_op("relax.nn.conv1d")(p["x_dq"], p["w_dq"])
    p["mm_w"] = is_op("relax.matmul")(p["x_dq"], p["w_dq"] | p["w_t"])
    p["mm_a"] = is_op("relax.matmul")(p["a_dq"], p["b_dq"])
    return p


def _activation(dq):
    """(integer tensor, scale float, zero point int) of a dequantized activation, or None."""
    q, scale, zp = dq.args
    if _dtype(q) not in INT_DTYPES or _np(scale).size != 1:
        return None
    z = _scalar_zp(_np(zp))
    return None if z is None else (q, float(_np(scale).reshape(-1)[0]), z)


def _weight(dq):
    """(s8 weights, scales float64, scale axis) of a dequantized constant weight, or None."""
    q, scale, zp = dq.args
    wq, sw, zw = _np(q), _np(scale).astype(np.float64), _np(zp)
    if wq.dtype != np.int8 or np.any(zw != 0):
        return None  # symmetric s8 weights only (the quantize stage always writes those)
    return wq, sw, int(dq.attrs.axis)


def _rescaled(acc, scale: np.ndarray):
    """float32(acc) * scale: the epilogue every integer kernel gets."""
    return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale))


class _Integerizer:
    """The rewrite callbacks of :func:`integerize` and what they share: the target's instruction, the
    kernels added so far (one per shape, through a BlockBuilder over the module) and the report."""

    def __init__(self, mod: tvm.IRModule, packed: PackedDot | None, report: RewriteReport):
        self.packed, self.report = packed, report
        self.builder = relax.BlockBuilder(mod)
        self.kernels: dict[str, tvm.ir.GlobalVar] = {}
        self.patterns = _patterns()

    def kernel(self, name: str, make, spec: PackedDot) -> tvm.ir.GlobalVar:
        """The kernel ``name``, made by ``make()`` and added to the module the first time it is asked for."""
        if name not in self.kernels:
            self.kernels[name] = self.builder.add_func(make(), name)
            self.report.instructions.add(spec.instruction)
        return self.kernels[name]

    def packed_call(self, x, dtype: str, shape: tuple[int, ...], w_nk: np.ndarray, groups: int):
        """call_tir of the packed kernel on u8 x of ``shape`` [..., K] -> [..., N] int32, or None if it
        does not fit (the fallback is the plain integer conv1d/matmul)."""
        n, kg = w_nk.shape
        spec = packed_for_layer(self.packed, dtype, w_nk, shape[-2] if len(shape) > 1 else 1)
        if spec is None or dtype not in spec.accepts or n % (spec.block_lanes(groups) * groups) or kg % spec.k \
                or shape[-1] != kg * groups:
            return None
        if dtype != spec.x_dtype:
            x = relax.op.astype(x, spec.x_dtype)
        name = spec.block + "_" + "x".join(map(str, shape)) + f"_n{n}_g{groups}"
        gv = self.kernel(name, lambda: _te_packed(shape, n, groups, name, spec), spec)
        out_ty = relax.TensorType((*shape[:-1], n), "int32")
        return relax.call_tir(gv, [x, relax.const(_pack(w_nk, groups, spec))], out_ty)

    def packed_pair(self, aq, bq, za: int, zb: int):
        """(aq - za) x (bq - zb), [..., M, K] x [..., K, N] with the same leading dims, on the target's
        dot-product kernel with b packed at run time (:func:`_pack_relax`), or None if it does not fit
        (generic integer matmul instead).

        AVX2: both operands widened to int16 with their zero points subtracted on the way, on the exact
        vpmaddwd kernel (u8 x u8 cannot take vpmaddubsw: no operand is 7-bit). VNNI: a stays u8 and b is
        shifted to s8 (:func:`_vnni_zero_points`). sdot (s8 activations, the Pi 5 and Orin): both
        operands as they are, the zero points corrected as for a plain matmul."""
        # the attention's operands are both activations, -128 included: on the A72 each half of the products apart
        packed = self.packed
        spec = NEON if packed is NEON16 else packed if packed in (AVX2, VNNI, SDOT) else None
        sa, sb = (tuple(int(d) for d in t.ty.shape) for t in (aq, bq))
        n_out, pad = sb[-1], _pair_padding(spec, sa, sb)
        if pad:  # a 14-token bucket's keys: both operands padded with their zero points, the extra outputs dropped
            norm = self.builder.normalize  # types the new calls (what the packing reads of them)
            aq, bq, sa, sb = norm(_padded(aq, sa, 0, pad[0], za)), norm(_padded(bq, sb, pad[0], pad[1], zb)), \
                (*sa[:-1], sa[-1] + pad[0]), (*sb[:-2], sb[-2] + pad[0], sb[-1] + pad[1])
        if spec is None or len(sa) != len(sb) or len(sa) < 3 or sa[:-2] != sb[:-2] or sa[-1] != sb[-2] \
                or sb[-1] % spec.lanes or sa[-1] % spec.k \
                or (spec is VNNI and (_dtype(aq), _dtype(bq)) != ("uint8", "uint8")) \
                or (spec in (SDOT, NEON) and (_dtype(aq), _dtype(bq)) != ("int8", "int8")):
            return None
        name = spec.block + "_pair_" + "x".join(map(str, sa)) + f"_n{sb[-1]}"
        gv = self.kernel(name, lambda: _te_packed_pair(sa, sb[-1], name, spec), spec)
        out_ty = relax.TensorType((*sa[:-1], sb[-1]), "int32")
        if spec is AVX2:
            return relax.call_tir(gv, [_widen(aq, AVX2.x_dtype, za), _pack_relax(bq, sb, AVX2, zb)], out_ty)
        if spec in (SDOT, NEON):
            acc = _zero_points(relax.call_tir(gv, [aq, _pack_relax(bq, sb, spec)], out_ty), aq, bq, za, zb)
            return relax.op.strided_slice(acc, [len(sb) - 1], [0], [n_out]) if sb[-1] != n_out else acc
        return _vnni_zero_points(relax.call_tir(gv, [aq, _pack_relax(bq, sb, VNNI, 128)], out_ty), aq, bq, za, zb)

    def conv(self, orig, m):
        """A grouped 1x1 convolution (or any unpadded NCW one) on integer operands."""
        at = orig.attrs
        xa, w = _activation(m[self.patterns["x_dq"]]), _weight(m[self.patterns["w_dq"]])
        if xa is None or w is None or any(int(p) for p in at.padding) or at.data_layout != "NCW" \
                or at.kernel_layout != "OIW":
            self.report.skipped.append("conv1d")
            return orig
        (xq, sx, zx), (wq, sw, axis) = xa, w
        if sw.size > 1 and axis != 0:
            self.report.skipped.append("conv1d (weight scale axis)")
            return orig
        out_ch = wq.shape[0]
        acc = None
        if self.packed and _dtype(xq) in self.packed.accepts and wq.shape[2] == 1 \
                and all(int(v) == 1 for v in (*at.strides, *at.dilation)):
            b, c, w = (int(d) for d in xq.ty.shape)
            acc_t = self.packed_call(relax.op.permute_dims(xq, [0, 2, 1]), _dtype(xq), (b, w, c), wq[:, :, 0],
                                     int(at.groups))
            acc = None if acc_t is None else relax.op.permute_dims(acc_t, [0, 2, 1])  # NWC -> NCW
        if acc is None:
            acc = relax.op.nn.conv1d(xq, relax.const(wq), strides=at.strides, padding=at.padding,
                                     dilation=at.dilation, groups=at.groups, data_layout="NCW",
                                     kernel_layout="OIW", out_dtype="int32")
        if zx:  # conv(xq - zx, W) = conv(xq, W) - zx * sum(W[o]) for an unpadded convolution
            corr = zx * wq.astype(np.int64).reshape(out_ch, -1).sum(1)
            acc = relax.op.subtract(acc, relax.const(corr.astype(np.int32).reshape(1, out_ch, 1)))
        self.report.conv1d += 1
        return _rescaled(acc, (sx * np.broadcast_to(sw.reshape(-1), (out_ch,))).astype(np.float32).reshape(1, out_ch, 1))

    def matmul_weight(self, orig, m):
        """A matmul by a constant (possibly transposed) weight on integer operands."""
        xa, w = _activation(m[self.patterns["x_dq"]]), _weight(m[self.patterns["w_dq"]])
        if xa is None or w is None or orig.attrs.out_dtype not in ("", None, "void", "float32"):
            self.report.skipped.append("matmul")
            return orig
        (xq, sx, zx), (wq, sw, axis) = xa, w
        w_t = self.patterns["w_t"]
        transposed = w_t in m
        if wq.ndim != 2 or (transposed and [int(i) for i in m[w_t].attrs.axes] != [1, 0]):
            self.report.skipped.append("matmul (weight shape)")
            return orig
        n_axis = 0 if transposed else 1  # the weight axis that becomes the output's last axis
        if sw.size > 1 and axis != n_axis:
            self.report.skipped.append("matmul (weight scale axis)")
            return orig
        wkn = wq.T if transposed else wq  # [K, N]
        acc = None
        if self.packed:
            acc = self.packed_call(xq, _dtype(xq), tuple(int(d) for d in xq.ty.shape), np.ascontiguousarray(wkn.T), 1)
        if acc is None:
            acc = relax.op.matmul(xq, relax.const(np.ascontiguousarray(wkn)), out_dtype="int32")
        if zx:
            acc = relax.op.subtract(acc, relax.const((zx * wkn.astype(np.int64).sum(0)).astype(np.int32)))
        self.report.matmul_weight += 1
        return _rescaled(acc, (sx * np.broadcast_to(sw.reshape(-1), (wkn.shape[1],))).astype(np.float32))

    def matmul_activation(self, orig, m):
        """A matmul of two dequantized activations (attention) on integer operands."""
        aa, ba = _activation(m[self.patterns["a_dq"]]), _activation(m[self.patterns["b_dq"]])
        if aa is None or ba is None:
            self.report.skipped.append("matmul (activations)")
            return orig
        (aq, sa, za), (bq, sb, zb) = aa, ba
        acc = self.packed_pair(aq, bq, za, zb)
        if acc is None:
            acc = _zero_points(relax.op.matmul(aq, bq, out_dtype="int32"), aq, bq, za, zb)
        self.report.matmul_activation += 1
        return _rescaled(acc, np.float32(sa * sb))


def _pair_padding(spec: PackedDot | None, sa: tuple[int, ...], sb: tuple[int, ...]) -> tuple[int, int] | None:
    """(k, n) zeros to add to an aarch64 attention matmul's reduction and output lengths so that its packed
    kernel takes them (a 14-token bucket: 14 keys, K of P V and N of Q K^T, to 16), or None where none is
    needed or the shapes are not an attention matmul's."""
    if spec not in (SDOT, NEON) or len(sa) < 3 or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        return None
    k = (-sa[-1]) % spec.k
    n = (-sb[-1]) % spec.lanes
    return (k, n) if k or n else None


def _padded(x, shape: tuple[int, ...], rows: int, columns: int, zero: int):
    """x [..., R, C] with ``rows`` more rows and ``columns`` more columns, all ``zero`` (the operand's zero
    point: (zero - zero) adds nothing to any product)."""
    if not rows and not columns:
        return x
    return relax.op.nn.pad(x, [0] * (2 * len(shape) - 4) + [0, rows, 0, columns], pad_value=float(zero))


def _vnni_zero_points(acc, aq, bq, za: int, zb: int):
    """sum_k (a - za)(b - zb) from acc = sum_k a b' with b' = b - 128 (vpdpbusd's s8 operand, exact):
    with c = 128 - zb, sum (a - za)(b - zb) = acc + c rowsum(a) - za colsum(b') - K za c."""
    c, k = 128 - zb, int(aq.ty.shape[-1])
    if c:
        rows = relax.op.sum(relax.op.astype(aq, "int32"), axis=[-1], keepdims=True)
        acc = relax.op.add(acc, relax.op.multiply(rows, relax.const(c, "int32")))
    if za:
        cols = relax.op.sum(relax.op.astype(bq, "int32"), axis=[-2], keepdims=True)  # colsum(b') + 128 K
        acc = relax.op.subtract(acc, relax.op.multiply(cols, relax.const(za, "int32")))
        acc = relax.op.add(acc, relax.const(za * 128 * k - k * za * c, "int32"))
    return acc


@tvm.transform.module_pass(opt_level=0, name="Integerize")
class Integerize:
    """The pass: :func:`integerize` with the target's instruction, its counts into ``report``."""

    def __init__(self, packed: PackedDot | None, report: RewriteReport):
        self.packed, self.report = packed, report

    def transform_module(self, mod, _ctx):
        return integerize(mod, packed=self.packed, report=self.report)[0]


def float_compute_layers(mod: tvm.IRModule, func_name: str = "main") -> list[str]:
    """conv1d/matmul calls in a Relax function that still multiply float tensors."""
    found = []

    @relax.expr_functor.visitor
    class Visit(relax.PyExprVisitor):
        def visit_call_(self, call):
            if isinstance(call.op, tvm.ir.Op) and call.op.name in ("relax.nn.conv1d", "relax.matmul"):
                if any(_dtype(arg).startswith("float") for arg in call.args[:2]):
                    found.append(call.op.name)
            super().visit_call_(call)

    Visit().visit_expr(mod[func_name])
    return found


def mac_kernels(mod: tvm.IRModule) -> dict[str, list[str]]:
    """Multiply-accumulate kernels of a lowered (TIR) module, split by the arithmetic they really do.

    Reads the reduction updates (``acc[i] = acc[i] + a * b``) of every conv1d/matmul PrimFunc after
    legalization and fusion: integer kernels multiply their u8/s8 operands cast to int32; anything else
    multiplies in float. Returns {"integer": [names], "float": [names]}, a name once per update.
    """
    out: dict[str, list[str]] = {"integer": [], "float": []}
    for gv, func in mod.functions.items():
        name = gv.name_hint
        if not isinstance(func, tvm.tirx.PrimFunc) or not any(op in name for op in MAC_KERNELS):
            continue
        for product in reduction_updates(func):
            out["integer" if str(product.ty.dtype).startswith("int") else "float"].append(name)
    return out


DOT_INTRINSICS = ("llvm.x86.avx512.vpdpbusd.512", "llvm.x86.avx2.pmadd.wd", "llvm.x86.avx2.pmadd.ub.sw",
                  "llvm.aarch64.neon.sdot", "llvm.aarch64.neon.udot", "llvm.aarch64.neon.smull")  # smull: both NEON sequences


def tensorized_kernels(mod: tvm.IRModule) -> list[str]:
    """PrimFuncs of a lowered module whose code calls a dot-product intrinsic (vpdpbusd, vpmaddwd, sdot/udot,
    NEON smull)."""
    ids = {tvm.target.codegen.llvm_lookup_intrinsic_id(name) for name in DOT_INTRINSICS}
    return [gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and llvm_intrinsics_called(f) & ids]
