"""compiler/lowering/requantize.py: dequantize -> reshape/transpose -> quantize with the same parameters becomes
the layout ops on the integer tensor (same bytes out), and a kernel's requantize epilogue folds into one
multiply-add (the same 8-bit values but for rare one-step ties); nothing else is touched."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.gelu_quantize import INT8_ERF, erf_rational, fold_gelu_quantize, rational_erfs
from squeezeedge.lowering.layer_norm_quantize import fold_layer_norm_quantize
from squeezeedge.lowering.requantize import fold_requantize, fold_scale_chains
from squeezeedge.lowering.round_trips import drop_round_trips
from squeezeedge.lowering.softmax_quantize import fold_softmax_quantize


def _module(out_scale: float = 0.02, reuse: bool = False, layout: bool = True) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((1, 16, 16), "uint8"))
    with bb.function("main", [q]):
        with bb.dataflow():
            x = bb.emit(relax.op.dequantize(q, relax.const(0.02, "float32"), relax.const(9, "uint8"), axis=2))
            r = bb.emit(relax.op.reshape(x, (1, 16, 4, 4))) if layout else x
            t = bb.emit(relax.op.permute_dims(r, [0, 2, 1, 3])) if layout else x
            y = bb.emit(relax.op.quantize(t, relax.const(out_scale, "float32"), relax.const(9, "uint8"), axis=-1,
                                          out_dtype="uint8"))
            out = bb.emit_output(relax.Tuple([y, r]) if reuse else y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, q):
    out = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(q))
    return out[0].numpy() if isinstance(out, tvm.ir.Array) else out.numpy()


@pytest.mark.parametrize("layout", [True, False], ids=["through-layout-ops", "layout-ops-sunk-before-it"])
def test_round_trip_becomes_byte_moves_with_the_same_output(layout):
    mod = _module(layout=layout)
    new, n = drop_round_trips(mod)
    script = new["main"].script()
    assert n == 1 and "R.quantize" not in script and "R.dequantize" not in script
    q = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)  # every u8 value once
    np.testing.assert_array_equal(_run(new, q), _run(mod, q))


@pytest.mark.parametrize("kwargs", [{"out_scale": 0.03}, {"reuse": True}])
def test_other_parameters_or_shared_values_are_left_alone(kwargs):
    new, n = drop_round_trips(_module(**kwargs))
    assert n == 0 and "R.dequantize" in new["main"].script()


N = 48  # channels


def _epilogue(with_bias: bool = True, scale_is_input: bool = False, out_dtype: str = "uint8",
              heads: bool = False) -> tvm.IRModule:
    """int32 sums -> the chain integerize emits (zero-point correction, cast, per-channel rescale, bias)
    -> (with ``heads``, a reshape into 4 heads of 12, as the attention's Q/K/V) -> the next layer's quantize."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    acc = relax.Var("acc", relax.TensorType((1, 16, N), "int32"))
    params = [acc]
    if scale_is_input:
        params.append(relax.Var("s", relax.TensorType((1, 1, N), "float32")))
    with bb.function("main", params):
        with bb.dataflow():
            x = bb.emit(relax.op.subtract(acc, relax.const(rng.integers(-40000, 40000, (1, 1, N)).astype("int32"))))
            x = bb.emit(relax.op.astype(x, "float32"))
            s = params[1] if scale_is_input else relax.const((rng.random((1, 1, N)) * 1e-4).astype("float32"))
            x = bb.emit(relax.op.multiply(x, s))
            if with_bias:
                x = bb.emit(relax.op.add(x, relax.const(rng.standard_normal((1, 1, N)).astype("float32"))))
            if heads:
                x = bb.emit(relax.op.reshape(x, (1, 16, 4, N // 4)))
            y = bb.emit(relax.op.quantize(x, relax.const(0.03, "float32"), relax.const(7, out_dtype), axis=2,
                                          out_dtype=out_dtype))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("out_dtype, heads", [("uint8", False), ("int8", False), ("int8", True)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_requantize_epilogue_folds_to_one_multiply_add(with_bias, out_dtype, heads):
    """With ``heads`` the reshape between the chain and the quantize moves after it (a view of 8 bits)."""
    mod = _epilogue(with_bias, out_dtype=out_dtype, heads=heads)
    new, n = fold_requantize(mod)
    script = new["main"].script()
    assert n == 1 and "R.subtract" not in script and script.count("R.multiply") == 1
    if heads:
        assert script.index("R.reshape") > script.index("R.quantize")  # quantized first, then the view
    acc = np.random.default_rng(1).integers(-200000, 200000, (1, 16, N)).astype("int32")
    acc[0, 0, :] = [-(2 ** 23), 2 ** 23] * (N // 2)  # the largest sums a 7-bit K=768 kernel can reach
    old, folded = _run(mod, acc).astype(int), _run(new, acc).astype(int)
    assert np.abs(old - folded).max() <= 1  # float32 ties may round the other way, one step at most
    assert np.mean(old != folded) < 0.01
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    assert folded.min() == lo and folded.max() == hi  # the clip is still there (the extremes saturate)


def test_requantize_with_a_runtime_operand_is_left_alone():
    new, n = fold_requantize(_epilogue(scale_is_input=True))
    assert n == 0 and "R.subtract" in new["main"].script()


def _scores(with_bias: bool) -> tvm.IRModule:
    """The attention's scores: int32 sums -> cast -> s_q s_k -> / sqrt(d) (-> a bias) -> + the mask (an input)."""
    bb = relax.BlockBuilder()
    acc, mask = relax.Var("acc", relax.TensorType((1, 2, 8, 8), "int32")), relax.Var("mask", relax.TensorType((1, 1, 1, 8), "float32"))
    with bb.function("main", [acc, mask]):
        with bb.dataflow():
            x = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), relax.const(1.25e-4, "float32")))
            x = bb.emit(relax.op.divide(x, relax.const(8.0, "float32")))
            if with_bias:
                x = bb.emit(relax.op.add(x, relax.const(0.5, "float32")))
            out = bb.emit_output(bb.emit(relax.op.add(x, mask)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("with_bias", [True, False])
def test_the_scores_two_scales_fold_into_one_multiply(with_bias):
    """a * float(acc) + b before a tensor's add: one multiply (and the bias add), the same values within
    float32's rounding; a chain already that short is left alone."""
    mod = _scores(with_bias)
    new, n = fold_scale_chains(mod)
    script = new["main"].script()
    assert n == 1 and "R.divide" not in script and script.count("R.multiply") == 1
    assert script.count("R.add") == 1 + with_bias
    rng = np.random.default_rng(0)
    acc = rng.integers(-300000, 300000, (1, 2, 8, 8)).astype("int32")
    mask = np.where(rng.random((1, 1, 1, 8)) < 0.3, -10000.0, 0.0).astype("float32")
    run = lambda m: relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())["main"](  # noqa: E731
        tvm.runtime.tensor(acc), tvm.runtime.tensor(mask)).numpy()
    np.testing.assert_allclose(run(new), run(mod), rtol=1e-6, atol=1e-6)
    assert fold_scale_chains(new)[1] == 0


def _softmax_quantize(masked: bool = True) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 16, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.softmax(x, axis=-1))
            y = bb.emit(relax.op.quantize(p, relax.const(1 / 255, "float32"), relax.const(0, "uint8"), axis=3,
                                          out_dtype="uint8"))
            out = bb.emit_output(relax.op.astype(y, "int16"))  # the widening for the attention kernel
        bb.emit_func_output(out)
    return bb.get()


def test_quantized_softmax_divides_once_a_row():
    """quantize(softmax(x)) -> one kernel, one parallel loop over rows, the per-row reciprocal kept as a
    block of its own (not inlined into every element); the same 8-bit values but for one-step ties."""
    from squeezeedge.lowering.pipeline import fuse
    from squeezeedge.lowering.schedules import default_schedules

    mod = _softmax_quantize()
    new, n = fold_softmax_quantize(mod)
    assert n == 1 and "R.nn.softmax" not in new["main"].script()
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": 2})
    fused, counts = default_schedules(fuse(new, target), target)
    kernels = [f.script() for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
               and gv.name_hint.startswith("fused_softmax_quantize")]  # with the cast to int16
    assert len(kernels) == 1 and kernels[0].count("T.parallel") == 1 and 'T.sblock("row_scale")' in kernels[0]
    x = np.random.default_rng(3).standard_normal((1, 4, 16, 64)).astype("float32") * 4
    x[..., -8:] = np.finfo(np.float32).min  # masked keys, as the attention mask adds them
    old = _run(relax.get_pipeline("zero")(mod), x).astype(int)
    got = relax.VirtualMachine(tvm.compile(fused, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(got.astype(int) - old).max() <= 1 and np.mean(got != old) < 0.01
    assert got[..., -8:].max() == 0 and got.max() > 100


def test_quantized_layer_norm_folds_the_scale_into_its_constants():
    rng = np.random.default_rng(4)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.layer_norm(x, relax.const(rng.random(64).astype("float32") + 0.5),
                                               relax.const(rng.standard_normal(64).astype("float32")), axes=[-1]))
            out = bb.emit_output(relax.op.quantize(y, relax.const(0.02, "float32"), relax.const(120, "uint8"),
                                                   axis=2, out_dtype="uint8"))
        bb.emit_func_output(out)
    mod = bb.get()
    new, n = fold_layer_norm_quantize(mod)
    assert n == 1 and "R.const(0.019999" not in new["main"].script()
    v = rng.standard_normal((1, 16, 64)).astype("float32") * 3
    old, got = _run(mod, v).astype(int), _run(new, v).astype(int)
    assert np.abs(got - old).max() <= 1 and np.mean(got != old) < 0.01 and got.min() == 0 and got.max() == 255


@pytest.mark.parametrize("top_byte, half", [(False, False), (True, False), (True, True)])
def test_quantized_softmax_reads_the_8_bit_scores_and_the_mask(top_byte, half):
    """softmax(dequantize(q) / 8 + mask) -> quantize: the kernel takes the u8 scores and the float mask
    (the score kernel then writes 1 byte a score, not a 4-byte float); same values but one-step ties.
    With ``top_byte`` (aarch64's) the output is the top byte of a saturating fixed-point convert; with
    ``half`` (the A76's) exp and the output run in float16: within one step, 5% of outputs a step apart."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((1, 4, 16, 64), "uint8"))
    mask = relax.Var("mask", relax.TensorType((1, 1, 16, 64), "float32"))
    with bb.function("main", [q, mask]):
        with bb.dataflow():
            x = bb.emit(relax.op.dequantize(q, relax.const(0.4, "float32"), relax.const(131, "uint8"), axis=1))
            x = bb.emit(relax.op.add(relax.op.divide(x, relax.const(8.0, "float32")), mask))
            p = bb.emit(relax.op.nn.softmax(x, axis=-1))
            out = bb.emit_output(relax.op.quantize(p, relax.const(1 / 255, "float32"), relax.const(0, "uint8"),
                                                   axis=3, out_dtype="uint8"))
        bb.emit_func_output(out)
    mod = bb.get()
    new, n = fold_softmax_quantize(mod, top_byte=top_byte, half=half)
    kernel = next(f for gv, f in new.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert ("llvm.fptoui.sat" in kernel.script()) == top_byte
    # the scores, the mask, exp's constants (a kernel input: LLVM hoists their loads out of the loop), the output
    consts = "float16" if half else "float32"
    assert n == 1 and [str(p.dtype) for p in kernel.params] == ["uint8", "float32", consts, "uint8"]
    rng = np.random.default_rng(5)
    qv = rng.integers(0, 256, (1, 4, 16, 64)).astype("uint8")
    mv = np.where(rng.random((1, 1, 16, 64)) < 0.2, np.finfo(np.float32).min, 0).astype("float32")
    run = lambda m: relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())["main"](  # noqa: E731
        tvm.runtime.tensor(qv), tvm.runtime.tensor(mv)).numpy().astype(int)
    old, got = run(mod), run(new)
    assert np.abs(got - old).max() <= 1 and np.mean(got != old) < (0.05 if half else 0.01) and got.max() > 20
    assert got[np.broadcast_to(mv < 0, got.shape)].max() == 0  # masked keys get nothing


def test_an_integer_divide_before_the_cast_is_left_alone():
    """int32 // c floors (and int32 * c may wrap): not an affine map of the sums, so no fold."""
    bb = relax.BlockBuilder()
    acc = relax.Var("acc", relax.TensorType((1, 16, N), "int32"))
    with bb.function("main", [acc]):
        with bb.dataflow():
            x = bb.emit(relax.op.divide(acc, relax.const(3, "int32")))
            x = bb.emit(relax.op.astype(x, "float32"))
            x = bb.emit(relax.op.multiply(x, relax.const(0.5, "float32")))
            y = bb.emit(relax.op.quantize(x, relax.const(0.03, "float32"), relax.const(7, "uint8"), axis=2,
                                          out_dtype="uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    new, n = fold_requantize(bb.get())
    assert n == 0 and "R.divide" in new["main"].script()


def _gelu_epilogue(extra_reader: bool = False) -> tvm.IRModule:
    """int32 sums -> rescale, bias -> the exported GELU (x * (0.5 * (1 + erf(x / sqrt 2)))) -> SmoothQuant's
    per-channel multiply -> the next layer's s8 quantize: the first FFN layer of the trained-model recipe."""
    rng = np.random.default_rng(6)
    bb = relax.BlockBuilder()
    acc = relax.Var("acc", relax.TensorType((1, 16, N), "int32"))
    with bb.function("main", [acc]):
        with bb.dataflow():
            x = bb.emit(relax.op.astype(acc, "float32"))
            x = bb.emit(relax.op.multiply(x, relax.const((rng.random(N) * 2e-4 + 1e-5).astype("float32"))))
            x = bb.emit(relax.op.add(x, relax.const(rng.standard_normal(N).astype("float32"))))
            e = bb.emit(relax.op.erf(relax.op.divide(x, relax.const(1.4142135381698608, "float32"))))
            g = bb.emit(relax.op.multiply(relax.const(0.5, "float32"), relax.op.add(e, relax.const(1.0, "float32"))))
            y = bb.emit(relax.op.multiply(relax.op.multiply(x, g),
                                          relax.const((rng.random(N) + 0.5).astype("float32"))))
            q = bb.emit(relax.op.quantize(y, relax.const(0.04, "float32"), relax.const(0, "int8"), axis=2,
                                          out_dtype="int8"))
            out = bb.emit_output(relax.Tuple([q, x]) if extra_reader else q)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("half", [False, True])
def test_gelu_epilogue_folds_to_two_multiply_adds_and_one_multiply(half):
    """The GELU epilogue's constants folded (compiler/lowering/gelu_quantize.py): no divide but erf's one,
    erf a rational on a clamped input, the same 8-bit values but for one-step float32 ties; in float16
    after y (``half``, the A76) one step at most and under 5% of the values a step apart."""
    mod = _gelu_epilogue()
    new, n = fold_gelu_quantize(mod, half=half)
    script = new["main"].script()
    assert n == 1 and "R.erf" not in script and ('"float16"' in script) == half
    if half:  # y times lam in float16, then one elementwise kernel (gelu_quantize_half)
        assert script.count("R.multiply") == 1 and "gelu_quantize_1x16" in script and "R.quantize" not in script
    else:
        assert script.count("R.divide") == 1 and script.count("R.clip") == 1
        assert script.count("R.multiply") == 3 + 6  # the fold's 3; erf's y^2, y^4, P's 2 terms, Q's 1, y * P
    acc = np.random.default_rng(7).integers(-40000, 40000, (1, 16, N)).astype("int32")
    old, folded = _run(relax.get_pipeline("zero")(mod), acc).astype(int), _run(new, acc).astype(int)
    assert np.abs(old - folded).max() <= 1 and np.mean(old != folded) < (0.05 if half else 0.01)
    assert folded.min() < 0 and folded.max() == 127  # GELU's negative dip and the clip both survive


def test_the_a76_gelu_epilogue_computes_8_float16_values_a_vector():
    """On the A76 (FEAT_FP16) the folded GELU after y runs on 8-lane float16 vectors: w^4 behind an arithmetic
    fence, so its sums are an add and a multiply-add each (no multiply-add with a copied constant addend),
    the 8-bit output one fcvtns and one sqxtn (no + 0.5, no rounding instruction)."""
    from squeezeedge.lowering.gelu_quantize import gelu_quantize_half

    a76 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    sch = tvm.s_tir.Schedule(gelu_quantize_half((1, 16, N), (N,), "int8", 0.0, "main", neon=True))
    # as the sdot kernel's schedule vectorizes its epilogue: 8 lanes
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("gelu_quantized"))[-1], [None, 8])[1])
    asm = tvm.tirx.build(sch.mod, target=a76).inspect_source("asm")
    for op in ("fmla", "fdiv", "fadd", "fcvtns"):
        assert re.search(rf"\t{op}\tv\d+\.8h", asm), op
    fmla, fdiv = (len(re.findall(rf"\t{op}\tv\d+\.8h", asm)) for op in ("fmla", "fdiv"))
    assert fmla == 3 * fdiv  # N's and D's last terms and y + y erf: no constant addend (none copied)
    assert re.search(r"\tsqxtn\tv\d+\.8b, v\d+\.8h", asm) and not re.search(r"\t(frint\w*|fcvtzs)\tv\d+\.8h", asm)


def test_the_gelu_kernel_takes_neon_instructions_only_after_an_sdot_kernel():
    """NEON's own instructions (fcvtns, the fence) only where the folded GELU is an sdot kernel's epilogue
    (vectorized 8 or 4 lanes): after any other producer (here the function's input; on the Pi 5 a u8 model's
    generic matmul) the kernel is the portable one, which LLVM can split at any width."""
    mod, n = fold_gelu_quantize(_gelu_epilogue(), half=True, neon=True)
    (kernel,) = [f for gv, f in mod.functions.items() if gv.name_hint.startswith("gelu_quantize")]
    assert n == 1 and "llvm.aarch64" not in kernel.script() and "arithmetic.fence" not in kernel.script()


def test_the_scaled_erf_is_the_int8_one():
    """gelu_quantize_half's erf: w N(w^2) / D(w^2) on w = lam y, both monic, is INT8_ERF's rational (within
    float32's rounding of its coefficients) on [-4, 4]."""
    from squeezeedge.lowering.gelu_quantize import _scaled_form

    lam, clamp, (n0, n1), (d0, d1) = _scaled_form()
    y = np.linspace(-4, 4, 8001)
    w = np.clip(lam * y, -clamp, clamp)
    s = w * w
    scaled = w * (s * s + n1 * s + n0) / (s * s + d1 * s + d0)
    np.testing.assert_allclose(scaled, erf_rational(y, INT8_ERF), atol=2e-6)


def test_erf_rational_is_within_5e_6_of_erf_everywhere():
    """The emitted erf: a (3, 3) rational in y^2 on y clamped to [-3.2, 3.2], evaluated in float32 in the
    emitted order, within 5e-6 of erf on [-8, 8] (beyond 3.2, erf is within 6e-6 of +-1); the int8 GELU's
    (2, 2) one on [-2.5, 2.5] within 2.1e-4 (beyond 2.5, erf is within 4.1e-4 of +-1, less the fit's own error
    there)."""
    y = np.linspace(-8, 8, 400001)
    exact = np.array([math.erf(v) for v in y])
    assert np.abs(erf_rational(y) - exact).max() < 5e-6
    assert np.abs(erf_rational(y, INT8_ERF) - exact).max() < 2.1e-4


def test_fp32_erfs_become_the_rational_and_gelu_keeps_its_values():
    """rational_erfs (the CPU legalize phase) replaces each float32 erf of a Relax function: the exported
    fp32 GELU, built for this host, stays within 3e-6 |x| of the exact GELU (x in [-12, 12])."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 1000), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            e = bb.emit(relax.op.erf(bb.emit(relax.op.divide(x, relax.const(1.4142135381698608, "float32")))))
            g = bb.emit(relax.op.multiply(relax.op.multiply(x, relax.const(0.5, "float32")),
                                          bb.emit(relax.op.add(e, relax.const(1.0, "float32")))))
            out = bb.emit_output(g)
        bb.emit_func_output(out)
    mod, n = rational_erfs(bb.get())
    assert n == 1 and "R.erf" not in mod.script()
    xs = np.linspace(-12, 12, 4000, dtype=np.float32).reshape(4, 1000)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(xs)).numpy()
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xs.reshape(-1).astype(np.float64)])
    # GELU's error is x / 2 times erf's (5e-6; 6e-6 past the clamp): 3e-6 of |x|, 3e-6 below 1
    assert np.all(np.abs(got.reshape(-1) - exact) <= 3e-6 * np.maximum(1, np.abs(xs.reshape(-1))))


def test_gelu_whose_input_is_read_elsewhere_is_left_alone():
    new, n = fold_gelu_quantize(_gelu_epilogue(extra_reader=True))
    assert n == 0 and "R.divide" in new["main"].script()


@pytest.mark.parametrize("llvm", [True, False])
def test_softmax_exp_is_within_1e_5_of_exp_for_nonpositive_inputs(llvm):
    """softmax's exp (x - max <= 0): 2^n * P(f) with 2^n built in the exponent bits; relative error under
    1e-5 (P's 2.9e-6 and float32's rounding of x log2(e) at large |x|) down to where exp leaves float32's
    normal range, and no more than 2^-126 below it (-inf too). Both roundings of n: the CPU's magic add
    and the GPU's round."""
    from tvm import te

    from squeezeedge.lowering.softmax_quantize import exp_nonpositive

    x = te.placeholder((4096,), "float32", name="x")
    f32 = lambda v: tvm.tirx.const(float(v), "float32")  # noqa: E731
    lib = tvm.tirx.build(te.create_prim_func([x, exp_nonpositive(x, f32, llvm)]), target="llvm")
    v = np.concatenate([-np.linspace(0, 87, 4090), [-88, -100, -1e4, np.finfo(np.float32).min, -np.inf, -0.0]])
    v = v.astype("float32")
    out = tvm.runtime.tensor(np.zeros(4096, "float32"))
    lib(tvm.runtime.tensor(v), out)
    got, exact = out.numpy().astype(np.float64), np.exp(v.astype(np.float64))
    assert np.abs(got[:4090] / exact[:4090] - 1).max() < 1e-5
    assert np.abs(got[:100] / exact[:100] - 1).max() < 3.5e-6  # |x| < 2: P's own error
    assert np.all(got[4090:-1] <= 2.0 ** -126) and got[-1] == pytest.approx(1.0, rel=1e-6)


def test_float16_softmax_exp_is_within_2e_3_of_exp_and_0_below_2_to_the_minus_14_5():
    """The A76's softmax exp in float16: relative error under 2e-3 for x >= -2 (float16's step is 4.9e-4
    relative, the polynomial's 1.6e-4), under 6e-3 down to exp(x) = 2^-14 (x and x log2(e) rounded to float16
    steps of 2^-7 there: outputs of at most 2^-14 / s = 0.03 of an 8-bit step at s = 1/512); 0 below 2^-14.5
    (a masked key's -inf too); 1 at 0."""
    from tvm import te

    from squeezeedge.lowering.softmax_quantize import EXP_HALF_SCALE, exp_constants, exp_nonpositive_half

    x = te.placeholder((4096,), "float16", name="x")
    consts = te.placeholder((6,), "float16", name="consts")
    lib = tvm.tirx.build(te.create_prim_func([x, consts, exp_nonpositive_half(x, consts)]), target="llvm")
    v = np.concatenate([-np.linspace(0, 9.7, 4090), [-10.1, -11, -20, -1e4, -np.inf, -0.0]]).astype("float16")
    out = tvm.runtime.tensor(np.zeros(4096, "float16"))
    lib(tvm.runtime.tensor(v), tvm.runtime.tensor(exp_constants(half=True)), out)
    got, exact = out.numpy().astype(np.float64) * EXP_HALF_SCALE, np.exp(v.astype(np.float64))
    rel = np.abs(got[:4090] / exact[:4090] - 1)
    assert rel[v[:4090] >= -2].max() < 2e-3 and rel.max() < 6e-3
    assert np.all(got[4090:-1] == 0) and got[-1] == pytest.approx(1.0, abs=2e-4)


def test_fp32_softmax_becomes_one_kernel_with_the_softmax_exp():
    """float_softmaxes (the CPU legalize phase): each float32 softmax along the last axis becomes the
    row-max / exp / one-reciprocal kernel; built for this host and default-scheduled, it is within 1e-5
    (of the row's largest) of numpy's softmax, its rows sum to 1, and masked scores (the dtype's minimum)
    get at most 2^-126, float32's smallest normal, as with TVM's fast_exp."""
    from squeezeedge.lowering.schedules import default_schedules
    from squeezeedge.lowering.softmax_quantize import float_softmaxes

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 16, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.softmax(x, axis=-1))
        bb.emit_func_output(out)
    mod, n = float_softmaxes(bb.get())
    assert n == 1 and "R.nn.softmax" not in mod["main"].script()
    target = tvm.target.Target("llvm")
    with target:
        mod = relax.get_pipeline("zero")(mod)
    mod, counts = default_schedules(mod, target)
    assert counts["naive"] == 0
    rng = np.random.default_rng(5)
    v = (rng.standard_normal((1, 4, 16, 16)) * 4).astype(np.float32)
    v[..., 12:] = np.finfo(np.float32).min  # padding's masked scores
    got = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](tvm.runtime.tensor(v)).numpy()
    e = np.exp(v.astype(np.float64) - v.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    assert np.abs(got - ref).max() < 1e-5 * ref.max() and np.all(got[..., 12:] <= 2.0 ** -126)  # as fast_exp's
    np.testing.assert_allclose(got.sum(-1), 1, rtol=1e-5)


def _sums_into_the_half_gelu(n: int = 64) -> tvm.IRModule:
    """x (int32, an sdot kernel's sums before its bias) -> + bias (a kernel named as sdot's, its bias a constant)
    -> float32 * a -> float16 -> gelu_quantize_half: what AccumulatorBias leaves before the A76's GELU."""
    from tvm import te

    from squeezeedge.lowering.gelu_quantize import gelu_quantize_half

    rng = np.random.default_rng(3)
    xs, bs = te.placeholder((1, 16, n), "int32", name="x"), te.placeholder((n,), "int32", name="bias")
    ws = te.placeholder((1,), "int8", name="w")  # the weights an sdot kernel reads (unused here)
    sdot = te.create_prim_func([xs, ws, bs, te.compute((1, 16, n), lambda i, j, c: xs[i, j, c] + bs[c], name="s")])
    k = (rng.random((1, 1, n)) * 10 + 5).astype("float16")  # 255 / 2k: the inputs' reach past erf's clamp
    bb = relax.BlockBuilder()
    x, w = relax.Var("x", relax.TensorType((1, 16, n), "int32")), relax.Var("w", relax.TensorType((1,), "int8"))
    sdot_gv = bb.add_func(sdot.with_attr("global_symbol", "arm_sdot_t_bias"), "arm_sdot_t_bias")
    gelu_gv = bb.add_func(gelu_quantize_half((1, 16, n), (1, 1, n), "int8", -3.0, "gelu_quantize_t", False),
                          "gelu_quantize_t")
    with bb.function("main", [x, w]):
        with bb.dataflow():
            acc = bb.emit(relax.call_tir(sdot_gv, [x, w, relax.const(rng.integers(-3000, 3000, n).astype("int32"))],
                                         relax.TensorType((1, 16, n), "int32")))
            y = bb.emit(relax.op.astype(acc, "float32"))
            y = bb.emit(relax.op.multiply(y, relax.const((rng.random(n) * 4e-4 + 1e-4).astype("float32"))))
            y = bb.emit(relax.op.astype(y, "float16"))
            out = bb.emit_output(bb.emit(relax.call_tir(gelu_gv, [y, relax.const(k)],
                                                        relax.TensorType((1, 16, n), "int8"))))
        bb.emit_func_output(out)
    return bb.get()


def test_the_a76_gelu_reads_its_sums_through_int16():
    """sdot's sums into the float16 GELU shifted and saturated to int16, converted, one float16 multiply
    (compiler/lowering/gelu_quantize.py narrow_gelu_inputs): the 8-bit outputs one step at most from the
    float32 path's and under 5% a step apart; sums far past int16 saturate to 127 and, negative, to GELU's 0
    (z = -3, one step at most: the float32 path gave -7 to -23 there, erf's rational past its clamp times a
    huge input)."""
    from squeezeedge.lowering.gelu_quantize import narrow_gelu_inputs

    mod = _sums_into_the_half_gelu()
    new, n = narrow_gelu_inputs(mod)
    script = new["main"].script()
    assert n == 1 and "R.right_shift" in script and '"int16"' in script and '"float32"' not in script
    sums = np.random.default_rng(5).integers(-60000, 60000, (1, 16, 64)).astype("int32")
    sums[0, 0] = 2 ** 22  # far past int16 after the shift: saturated, the output too
    sums[0, 1] = -(2 ** 22)
    run = lambda m: relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())["main"](  # noqa: E731
        tvm.runtime.tensor(sums), tvm.runtime.tensor(np.zeros(1, np.int8))).numpy().astype(int)
    old, narrow = run(mod), run(new)
    assert np.abs(old - narrow)[0, 2:].max() <= 1 and np.mean(old[0, 2:] != narrow[0, 2:]) < 0.05
    assert np.all(narrow[0, 0] == 127) and np.abs(narrow[0, 1] + 3).max() <= 1


def _layer_norm_read_twice(c: int = 64) -> tvm.IRModule:
    """x -> y = layer_norm(x) -> quantize(y * m) (the next layer's input) and y + x (the residual's add)."""
    rng = np.random.default_rng(11)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, c), "float32"))
    const = lambda v: relax.const(v.astype("float32"))  # noqa: E731
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.layer_norm(x, const(rng.random(c) + 0.5), const(rng.standard_normal(c)),
                                               axes=[-1], epsilon=1e-12))
            v = bb.emit(relax.op.multiply(y, const(rng.random(c) + 0.5)))
            q = bb.emit(relax.op.quantize(v, relax.const(0.02, "float32"), relax.const(3, "int8"), axis=2,
                                          out_dtype="int8"))
            out = bb.emit_output(relax.Tuple([q, bb.emit(relax.op.add(y, x))]))
        bb.emit_func_output(out)
    return bb.get()


def test_a_layer_norm_read_twice_writes_its_quantize_too():
    """layer_norm_outputs: one kernel writes y and its 8-bit quantize (the statistics in one pass), scheduled as
    one loop over rows; y within float32's rounding of TVM's layer norm, the bytes one step at most apart."""
    from squeezeedge.lowering.layer_norm_quantize import layer_norm_outputs
    from squeezeedge.lowering.pipeline import fuse
    from squeezeedge.lowering.schedules import default_schedules

    mod = _layer_norm_read_twice()
    new, n = layer_norm_outputs(mod)
    script = new["main"].script()
    assert n == 1 and "R.nn.layer_norm" not in script and "R.quantize" not in script
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": 2})
    fused, counts = default_schedules(fuse(new, target), target)
    kernel = next(f.script() for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
                  and "layer_norm_quantize" in gv.name_hint)
    assert kernel.count("T.parallel") == 1 and "T.vectorized" in kernel
    x = (np.random.default_rng(2).standard_normal((1, 16, 64)) * 3 + 0.5).astype("float32")
    run = lambda m: [o.numpy() for o in relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())["main"](  # noqa: E731
        tvm.runtime.tensor(x))]
    (q_old, r_old), (q_new, r_new) = run(mod), run(fused)
    np.testing.assert_allclose(r_new, r_old, rtol=1e-5, atol=1e-5)
    assert np.abs(q_old.astype(int) - q_new).max() <= 1 and np.mean(q_old != q_new) < 0.02


def test_the_heads_merge_moves_after_the_quantize_with_its_scale():
    """The attention's output: scale -> heads merged (permute, reshape) -> SmoothQuant's per-channel m -> quantize
    folds into one multiply-add and quantize on the kernel's own layout, m mapped back through the merge, the
    8-bit values then moved (fold_requantize): the same bytes."""
    rng = np.random.default_rng(4)
    bb = relax.BlockBuilder()
    acc = relax.Var("acc", relax.TensorType((1, 12, 16, 64), "int32"))
    with bb.function("main", [acc]):
        with bb.dataflow():
            x = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), relax.const(2e-5, "float32")))
            x = bb.emit(relax.op.reshape(bb.emit(relax.op.permute_dims(x, [0, 1, 3, 2])), (1, 768, 16)))
            x = bb.emit(relax.op.multiply(x, relax.const((rng.random((768, 1)) + 0.5).astype("float32"))))
            q = bb.emit(relax.op.quantize(x, relax.const(0.003, "float32"), relax.const(0, "int8"), axis=1,
                                          out_dtype="int8"))
            out = bb.emit_output(relax.op.permute_dims(q, [0, 2, 1]))
        bb.emit_func_output(out)
    mod = bb.get()
    assert fold_requantize(mod, moves=False)[1] == 0  # x86 keeps its float32 transpose
    new, n = fold_requantize(mod)
    script = new["main"].script()
    assert n == 1 and script.count("R.multiply") == 1 and script.index("R.quantize") < script.index("R.reshape")
    acc_v = rng.integers(-200000, 200000, (1, 12, 16, 64)).astype("int32")
    old, folded = _run(mod, acc_v).astype(int), _run(new, acc_v).astype(int)
    assert np.abs(old - folded).max() <= 1 and np.mean(old != folded) < 0.01 and old.min() == -128
