"""quantize(softmax(x)) as one kernel that divides once a row (:func:`fold_softmax_quantize`)."""

from __future__ import annotations

import tvm
from tvm import relax

from squeezeedge.lowering.qdq import qparams_scalar, quantize_of_var, scalar, scalar_const
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings, rewrite_functions
from squeezeedge.lowering.top_byte_quantize import top_byte as top_byte_of

_SOFTMAX = tvm.ir.Op.get("relax.nn.softmax")


# 2^f on [-0.5, 0.5] (a least-squares fit reweighted towards the largest relative error), lowest power first:
# within 2.9e-6 of 2^f, relative
EXP2_P = (0.999999463558197, 0.6931212544441223, 0.24023965001106262, 0.05592082068324089, 0.009601905010640621)
LOG2E = 1.4426950408889634
_ROUND = 0x4B40007F  # the float32 1.5 * 2^23 + 127 (exact)
_ROUND_VALUE = 1.5 * 2 ** 23 + 127


# exp's constants as a kernel input on LLVM targets (:func:`exp_nonpositive`): LOG2E, the rounding constant
# twice (TVM's simplifier cancels (t + c[1]) - c[1]), P's five coefficients. Not the clamp: a max with a
# loaded value is a compare and a select (LLVM cannot rule out a NaN), with a constant one fmaxnm
EXP_CONSTANTS = (LOG2E, _ROUND_VALUE, _ROUND_VALUE, *EXP2_P)


# float16 (cores with FEAT_FP16, :func:`exp_nonpositive_half`): 18.142 * 2^f on [-0.5, 0.5] as the monic cubic
# d0 + d1 f + d2 f^2 + f^3, float16 coefficients (a weighted least-squares fit over the factor too), within
# 9.2e-5 relative (float16's own step is 4.9e-4); n rounded by adding 1.5 * 2^10 + 15. Monic: f^2 (d2 + f) takes
# an add where c2 + c3 f took a register copy and a multiply-add, and softmax's e / sum is the same whatever
# factor every e carries
EXP2_P_HALF = (18.140625, 12.578125, 4.40234375)
EXP_HALF_SCALE = 1 / 18.142  # exp(x) = exp_nonpositive_half(x) * EXP_HALF_SCALE
_ROUND_HALF = 1.5 * 2 ** 10 + 15
EXP_CONSTANTS_HALF = (LOG2E, _ROUND_HALF, _ROUND_HALF, *EXP2_P_HALF)


def exp_constants(half: bool = False):
    """:data:`EXP_CONSTANTS` as the float32 array a softmax kernel takes (``consts``); ``half``:
    :data:`EXP_CONSTANTS_HALF` in float16."""
    import numpy as np

    return np.array(EXP_CONSTANTS_HALF, np.float16) if half else np.array(EXP_CONSTANTS, np.float32)


def exp_nonpositive(x, f32, llvm: bool = True, consts=None):
    """exp(x) for x <= 0 (softmax's x - max): 2^n * P(f), t = x log2(e) clamped at -126, n = round(t), f = t - n,
    2^n built in the exponent bits. With ``llvm`` (CPU) n is rounded by adding 1.5 * 2^23 + 127
    (:data:`_ROUND`): the sum is an integer, round(t) + 1.5 * 2^23 + 127, whose low 9 bits are n + 127, 2^n's
    exponent field once shifted left 23 (nvcc cannot take: TVM's CUDA reinterpret takes the address of an
    expression; there n is round(t)). P is summed as (c0 + c1 f) + f^2 ((c2 + c3 f) + c4 f^2): two constant
    addends, where Horner's four each cost a register copy on NEON (fmla overwrites its addend). 14
    instructions a vector on NEON where frinti + fcvtzs + Horner took 16 and TVM's fast_exp (clamps both ways,
    6 Horner steps, a final max) 32.

    ``consts`` (LLVM targets): a float32 [8] input holding :data:`EXP_CONSTANTS`, read in place of the
    constants but the clamp. LLVM hoists a loop-invariant load and its splat out of the loop, but rebuilt each
    splatted constant inside it (a ``dup`` from a general register per constant a trip: 9 of the A76's 44
    instructions per 8 elements, results/PERFORMANCE-LOG.md 51)."""
    from tvm import te, tirx

    if consts is not None:
        log2e, rounding, rounding_value, *c = (consts[tirx.const(j, "int64")] for j in range(len(EXP_CONSTANTS)))
    else:
        log2e, rounding_value, c = f32(LOG2E), f32(float(_ROUND_VALUE)), [f32(v) for v in EXP2_P]
        # 1.5 * 2^23 + 127 twice: as bits (TVM's simplifier cancels (t + c) - c for one float constant c)
        rounding = tirx.reinterpret("float32", tirx.const(_ROUND, "int32"))

    def one(*i):
        t = te.max(x[i] * log2e, f32(-126.0))
        if llvm:
            m = t + rounding
            f = t - (m - rounding_value)
            exponent = tirx.shift_left(tirx.reinterpret("int32", m), tirx.const(23, "int32"))
        else:
            n = te.round(t)
            f = t - n
            exponent = tirx.shift_left(n.astype("int32") + 127, 23)
        two_n = tirx.reinterpret("float32", exponent)
        f2 = f * f
        p = (c[0] + c[1] * f) + f2 * ((c[2] + c[3] * f) + c[4] * f2)
        return p * two_n

    return te.compute(x.shape, one, name="exp")


def exp_nonpositive_half(x, consts):
    """exp(x) / EXP_HALF_SCALE (18.142 exp(x)) for float16 x <= 0 on 8 lanes a vector: :func:`exp_nonpositive`'s
    steps in float16, t clamped at -15 and n rounded by adding 1.5 * 2^10 + 15 (float16's step is 1 there), the
    sum's low 5 bits n + 15; shifted left 10 they are 2^n's exponent field, 0 (2^n = 0) at n = -15: exp(x)
    below 2^-14.5 (4.3e-5) is 0, a masked key's exactly. ``consts``: a float16 [6] input holding
    :data:`EXP_CONSTANTS_HALF`."""
    from tvm import te, tirx

    log2e, rounding, rounding_value, *c = (consts[tirx.const(j, "int64")] for j in range(len(EXP_CONSTANTS_HALF)))

    def one(*i):
        t = te.max(x[i] * log2e, tirx.const(-15.0, "float16"))
        m = t + rounding
        f = t - (m - rounding_value)
        two_n = tirx.reinterpret("float16", tirx.shift_left(tirx.reinterpret("int16", m), tirx.const(10, "int16")))
        return ((c[0] + c[1] * f) + f * f * (c[2] + f)) * two_n

    return te.compute(x.shape, one, name="exp")


def half_fits(scale: float, zero: int) -> bool:
    """Whether a softmax's float16 values before its 8-bit output, e / (sum * scale) + zero + 0.5 with e at
    most 1 and the sum at least 1 (the row's max has e = 1), stay well inside float16 (at most 65504)."""
    return 1.0 / scale + abs(zero) + 1 < 60000


def _te_softmax_quantize(shape: tuple[int, ...], scale: float, zero: int, out_dtype: str, name: str,
                         source: tuple | None = None, top_byte: bool = False, llvm: bool = True, half: bool = False):
    """x [..., N] -> quantize(softmax(x, -1), scale, zero): the row's max, exp (:func:`exp_nonpositive`),
    sum, then one reciprocal a row, 1 / (sum * scale), and a multiply an element, where softmax then
    quantize divided each element twice.

    With ``source`` = (q dtype, q zero point, a, mask shape), x is a * (q - zero point) + mask computed
    here from the 8-bit q (the attention scores) and a float mask broadcast against it: the kernel
    before writes one byte a score, not four.

    With ``top_byte`` (aarch64) the 8-bit output is :func:`~squeezeedge.lowering.top_byte_quantize.top_byte`
    of ``e * (1 / (sum * s)) + z + 0.5``: one multiply-add, a fixed-point convert and half a narrow a
    vector, where round, clamp both ways and convert took 5 and a half.

    With ``half`` (with ``top_byte``, cores with FEAT_FP16) x minus the row's max is rounded to float16 and
    exp (:func:`exp_nonpositive_half`), the multiply by the row's 1 / (sum * s) and the top byte run on 8
    float16 lanes; the sum adds float32s."""
    from tvm import te

    i64 = lambda d: tvm.tirx.const(d, "int64")  # noqa: E731
    f32 = lambda v: tvm.tirx.const(float(v), "float32")  # noqa: E731
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)  # out_dtype float32: softmax, scale 1
    full = tuple(i64(d) for d in shape)
    *rows, n = full
    if source is None:
        x = te.placeholder(full, "float32", name="x")
        inputs = [x]
    else:
        q_dtype, q_zero, a, mask_shape = source
        q = te.placeholder(full, q_dtype, name="q")
        mask = te.placeholder(tuple(i64(d) for d in mask_shape), "float32", name="mask")
        inputs = [q, mask]
        x = te.compute(full, lambda *i: f32(a) * (q[i].astype("float32") - f32(q_zero)) + mask[tuple(
            i64(0) if d == 1 else idx for d, idx in zip(mask_shape, i))], name="x")
    consts = te.placeholder((i64(len(EXP_CONSTANTS_HALF if half else EXP_CONSTANTS)),),
                            "float16" if half else "float32", name="consts") if llvm else None
    inputs += [consts] if llvm else []
    k1, k2 = te.reduce_axis((i64(0), n), "k1"), te.reduce_axis((i64(0), n), "k2")
    top = te.compute(rows, lambda *i: te.max(x[(*i, k1)], axis=k1), name="row_max")
    if half:
        h = te.compute(full, lambda *i: (x[i] - top[i[:-1]]).astype("float16"), name="shifted")
        e = exp_nonpositive_half(h, consts)
        if int(n) % 32 == 0:  # the two halves' float16 sums first (each at most 2 x 18.14, within 2^-10 of
            # exact), then float32 from there: half the converts and adds of a float32 sum of every value
            k2 = te.reduce_axis((i64(0), i64(int(n) // 2)), "k2")
            total = te.compute(rows, lambda *i: te.sum((e[(*i, k2)] + e[(*i, k2 + i64(int(n) // 2))]).astype(
                "float32"), axis=k2), name="row_sum")
        else:
            total = te.compute(rows, lambda *i: te.sum(e[(*i, k2)].astype("float32"), axis=k2), name="row_sum")
        inv = te.compute(rows, lambda *i: (f32(1.0) / (total[i] * f32(scale))).astype("float16"), name="row_scale")
        out = te.compute(full, lambda *i: top_byte_of(e[i] * inv[i[:-1]] + tvm.tirx.const(zero + 0.5, "float16"),
                                                      out_dtype), name="quantized")
        return te.create_prim_func([*inputs, out]).with_attr("global_symbol", name)
    e = exp_nonpositive(te.compute(full, lambda *i: x[i] - top[i[:-1]], name="shifted"), f32, llvm, consts)
    total = te.compute(rows, lambda *i: te.sum(e[(*i, k2)], axis=k2), name="row_sum")
    inv = te.compute(rows, lambda *i: f32(1.0) / (total[i] * f32(scale)), name="row_scale")
    if out_dtype == "float32":  # softmax itself (:func:`float_softmaxes`)
        out = te.compute(full, lambda *i: e[i] * inv[i[:-1]], name="softmax")
    elif top_byte:
        out = te.compute(full, lambda *i: top_byte_of(e[i] * inv[i[:-1]] + f32(zero + 0.5), out_dtype),
                         name="quantized")
    else:
        out = te.compute(full, lambda *i: te.max(te.min(te.round(e[i] * inv[i[:-1]]) + f32(zero), f32(hi)),
                                                 f32(lo)).astype(out_dtype), name="quantized")
    return te.create_prim_func([*inputs, out]).with_attr("global_symbol", name)


def _scores_source(x, values, uses):
    """(q, zero point, a, mask) when softmax's input ``x`` is a * dequantize(q) + mask (dequantize,
    then a divide or multiply by a scalar, then an added float tensor), each step read once; else None."""
    def call(var, *ops):
        v = values.get(var) if isinstance(var, relax.Var) and uses.get(var) == 1 else None
        return v if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in ops else None

    add = call(x, "relax.add")
    if add is None:
        return None
    for scaled, mask in (add.args, add.args[::-1]):
        step = call(scaled, "relax.divide", "relax.multiply")
        if step is None or not isinstance(mask, relax.Var) or str(mask.ty.dtype) != "float32" \
                or mask.ty.ndim != x.ty.ndim or not scalar_const(step.args[1]):
            continue
        dq = call(step.args[0], "relax.dequantize")
        if dq is None or not qparams_scalar(dq) \
                or str(dq.args[0].ty.dtype) not in ("uint8", "int8"):
            continue
        c, s1 = scalar(step.args[1]), scalar(dq.args[1])
        a = s1 / c if step.op.name == "relax.divide" else s1 * c
        return dq.args[0], int(scalar(dq.args[2])), a, mask
    return None


def fold_softmax_quantize(mod: tvm.IRModule, func_name: str = "main", top_byte: bool = False, llvm: bool = True,
                          half: bool = False) -> tuple[tvm.IRModule, int]:
    """``quantize(softmax(x, axis=-1), s, z)`` with scalar s, z -> one kernel that divides once a row
    (and, where x is ``a * dequantize(q) + mask``, reads the 8-bit q and the mask itself); with
    ``top_byte`` (aarch64) its output as the top byte of a fixed-point convert; ``llvm``: a CPU target
    (:func:`exp_nonpositive`); ``half`` (with both, cores with FEAT_FP16): exp and the output in float16
    where the quantize's scale lets (:func:`half_fits`).

    Softmax divides every exp by the row's sum and quantize divides the result by s: two divisions an
    element, which the scheduled kernel could not hide (results/PERFORMANCE-LOG.md). Here the row's max,
    exp and sum are
    as before and each element gets ``round(exp * (1 / (sum * s))) + z``: the same value in real
    arithmetic, a float32 tie may round the other way. Returns (module, how many were folded)."""
    kernels = {}

    def match(_var, value, values, uses):
        if not (quantize_of_var(value) and uses.get(value.args[0]) == 1
                and str(value.attrs.out_dtype) in ("uint8", "int8")):
            return None
        sm = values.get(value.args[0])
        if not (isinstance(sm, relax.Call) and sm.op.same_as(_SOFTMAX) and str(sm.args[0].ty.dtype) == "float32"):
            return None
        shape = tuple(int(d) for d in sm.args[0].ty.shape)
        if int(sm.attrs.axis) not in (-1, len(shape) - 1):
            return None
        s, z = scalar(value.args[1]), int(scalar(value.args[2]))
        dtype = str(value.attrs.out_dtype)
        name = f"softmax_quantize_{'x'.join(map(str, shape))}_{len(kernels)}"
        scores = _scores_source(sm.args[0], values, uses)
        in_half = half and top_byte and llvm and half_fits(s, z)
        if scores is None:
            source, args = None, [sm.args[0]]
        else:
            q, qz, a, mask = scores
            source, args = (str(q.ty.dtype), qz, a, tuple(int(d) for d in mask.ty.shape)), [q, mask]
        kernels[name] = _te_softmax_quantize(shape, s, z, dtype, name, source, top_byte, llvm, in_half)
        return args, name, relax.TensorType(shape, dtype), in_half

    gvs = {}  # name -> GlobalVar, once the kernels are in the module

    def emit(builder, visit, item):
        args, name, out_ty, in_half = item
        consts = [relax.const(exp_constants(in_half))] if llvm else []
        return builder.emit(relax.call_tir(gvs[name], [visit(a) for a in args] + consts, out_ty))

    return rewrite_bindings(mod, match, emit, func_name, kernels=kernels, gvs=gvs)


FoldSoftmaxQuantize = counted_pass("FoldSoftmaxQuantize", "softmax_folded")(fold_softmax_quantize)


def float_softmaxes(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Every float32 softmax along the last axis left in the module's Relax functions (fp32 attention) as
    :func:`_te_softmax_quantize`'s kernel with a float output: the row's max, :func:`exp_nonpositive`,
    the sum and one reciprocal a row, where TVM's fast_softmax (FastMathTransform) spends 32 instructions
    a vector on its exp (fp32 at 128 tokens on the Cortex-A72: 23.5 M, results/PERFORMANCE-LOG.md 48).
    Returns (module, how many were replaced)."""
    kernels, gvs = {}, {}

    def match(_var, value, _values, _uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(_SOFTMAX)
                and str(value.args[0].ty.dtype) == "float32"):
            return None
        shape = tuple(int(d) for d in value.args[0].ty.shape)
        if int(value.attrs.axis) not in (-1, len(shape) - 1):
            return None
        name = f"softmax_{'x'.join(map(str, shape))}"
        if name not in gvs:
            kernels[name] = _te_softmax_quantize(shape, 1.0, 0, "float32", name)
        return value.args[0], name, relax.TensorType(shape, "float32")

    def emit(builder, visit, item):
        x, name, out_ty = item
        return builder.emit(relax.call_tir(gvs[name], [visit(x), relax.const(exp_constants())], out_ty))

    return rewrite_functions(mod, match, emit, kernels, gvs)


FloatSoftmaxes = counted_pass("FloatSoftmaxes")(float_softmaxes)
