"""8-bit quantize on aarch64 as the top byte of a saturating fixed-point convert (:func:`top_byte_quantizes`).

``quantize(x, s, z)`` is ``round(x / s) + z`` clamped to 8 bits. With ``v = x / s + z + 0.5`` it is
``floor(v)`` clamped, and ``floor(v)`` clamped to [-128, 127] is the top byte of ``v * 2^24`` converted
to int32 with saturation: the int32 limits are 8-bit -128 and 128. LLVM emits that convert as one fcvtzs
#24 (fcvtzu for uint8) and the byte as ushr + xtn + uzp1 (uzp2 + shrn at 8 lanes): 4 instructions for 4
values where a rounding convert and saturating narrows took 6 (frinti, fcvtzs, sqxtn, smax, smin, uzp1)
and TVM's clamp in float 9. The ``+ 0.5`` costs nothing where the quantize's input already ends in a
constant add (the folded epilogues' ``acc * a + b``: b + z + 0.5, still one fmla) or is a layer norm
(its beta), and the ``/ s`` nothing where it ends in a constant multiply (SmoothQuant's after a layer
norm: m / s, no fdiv). ``floor(v)`` is ``round(x / s) + z`` except at an exact tie, which rounds up
rather than to even, and within float32's rounding of a tie. results/PERFORMANCE-LOG.md 49.
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from squeezeedge.lowering.qdq import QUANTIZE, qparams_scalar, scalar
from squeezeedge.lowering.rewrite import counted_pass, rewrite_functions

_ADD, _MULTIPLY, _LAYER_NORM = (tvm.ir.Op.get("relax." + op) for op in ("add", "multiply", "nn.layer_norm"))


def top_byte(v, out_dtype: str):
    """The 8-bit ``floor(v)``, clamped, of a float32 TIR value: ``fptosi.sat(v * 2^24) >> 24``; of a
    float16 one ``fptosi.sat(v * 2^8) >> 8`` (one fcvtzs #8 and one shrn for 8 values)."""
    from tvm import tirx

    dtype = str(v.ty.dtype if hasattr(v, "ty") else v.dtype)  # a PrimExpr, or a TE tensor's element
    bits = 16 if dtype == "float16" else 32
    wide = ("int" if out_dtype == "int8" else "uint") + str(bits)
    convert = "llvm.fptosi.sat" if out_dtype == "int8" else "llvm.fptoui.sat"
    top = tirx.call_llvm_pure_intrin(wide, convert, v * tirx.const(2.0 ** (bits - 8), dtype))
    return (top >> tirx.const(bits - 8, wide)).astype(out_dtype)


def i64(dims) -> tuple:
    """A TE shape in int64, as Relax's own kernels carry them (FuseTIR matches buffers by their types)."""
    from tvm import tirx

    return tuple(tirx.IntImm("int64", d) for d in dims)


def at(t, i):
    """TE tensor ``t`` read at index ``i`` of a larger tensor it broadcasts against (numpy's rules)."""
    from tvm import tirx

    lead = len(i) - len(t.shape)
    return t[tuple(tirx.const(0, "int64") if int(d) == 1 else i[lead + k] for k, d in enumerate(t.shape))]


def _kernel(shape, out_dtype: str, scale, offset, name: str, dtype: str = "float32") -> tvm.tirx.PrimFunc:
    """``top_byte(x * scale + offset)`` on ``x`` of ``shape`` (float32, or float16). ``scale`` and ``offset``
    are each a float or the shape of a tensor of x's dtype broadcast against ``x`` (the kernel's next inputs,
    in order)."""
    from tvm import te, tirx

    x = te.placeholder(i64(shape), dtype, name="x")
    m, c = (te.placeholder(i64(p), dtype, name=n) if isinstance(p, tuple) else p
            for p, n in ((scale, "m"), (offset, "c")))

    def one(*i):
        v = x[i] * at(m, i) if isinstance(m, te.Tensor) else x[i] if m == 1.0 else x[i] * tirx.const(m, dtype)
        v = v + at(c, i) if isinstance(c, te.Tensor) else v + tirx.const(c, dtype) if c else v
        return top_byte(v, out_dtype)

    out = te.compute(i64(shape), one, name="quantized")
    tensors = [t for t in (m, c) if isinstance(t, te.Tensor)]
    return te.create_prim_func([x, *tensors, out]).with_attr("global_symbol", name)


def _constant(expr, dtype: str) -> np.ndarray | None:
    ok = isinstance(expr, tvm.ir.expr.Constant) and str(expr.ty.dtype) == dtype
    return expr.value.numpy().astype(np.float64) if ok else None


def top_byte_quantizes(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Every ``quantize`` into int8 / uint8 with scalar constant parameters as one :func:`top_byte` kernel
    on ``x / s + z + 0.5``. Where ``x`` is read by the quantize only and is ``add(w, c)`` (s = 1) or
    ``layer_norm(w, g, c)`` (s = 1), c a float32 constant, c becomes ``c + z + 0.5``; where it is
    ``multiply(w, c)``, the kernel multiplies w by ``c / s``. Returns (module, how many quantizes)."""
    kernels, gvs, names = {}, {}, {}

    def kernel(shape, out, scale, offset, dtype) -> str:
        key = (shape, out, scale, offset, dtype)
        if key not in names:
            names[key] = f"quantize_top_byte_{len(names)}"
            kernels[names[key]] = _kernel(shape, out, scale, offset, names[key], dtype)
        return names[key]

    def match(_var, value, values, uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(QUANTIZE) and qparams_scalar(value)
                and str(value.attrs.out_dtype) in ("int8", "uint8")):
            return None
        x, s, z = value.args[0], scalar(value.args[1]), scalar(value.args[2])
        out, shape, dtype = str(value.attrs.out_dtype), tuple(int(d) for d in x.ty.shape), str(x.ty.dtype)
        if dtype not in ("float32", "float16"):
            return None
        producer = values.get(x) if isinstance(x, relax.Var) and uses.get(x) == 1 else None
        op = producer.op if isinstance(producer, relax.Call) else None
        if op is not None and (op.same_as(_ADD) or op.same_as(_MULTIPLY)):
            for w, c in (producer.args, producer.args[::-1]):
                c = _constant(c, dtype)
                if c is None or c.ndim > len(shape) or not tvm_ffi.structural_equal(w.ty.shape, x.ty.shape):
                    continue
                if op.same_as(_MULTIPLY):  # quantize's 1 / s into the multiplier: no divide
                    return kernel(shape, out, c.shape, z + 0.5, dtype), w, [(c / s).astype(dtype)], None, out
                if s == 1.0:
                    return kernel(shape, out, 1.0, c.shape, dtype), w, [(c + z + 0.5).astype(dtype)], None, out
        if op is not None and op.same_as(_LAYER_NORM) and s == 1.0:
            c = _constant(producer.args[2], dtype)
            if c is not None:  # beta + z + 0.5: the layer norm's output is v itself
                return kernel(shape, out, 1.0, 0.0, dtype), None, [(c + z + 0.5).astype(dtype)], producer, out
        return kernel(shape, out, 1.0 / s, z + 0.5, dtype), x, [], None, out

    def emit(builder, visit, item):
        name, x, constants, layer_norm, out = item
        if layer_norm is not None:
            args = [visit(layer_norm.args[0]), visit(layer_norm.args[1]), relax.const(constants[0])]
            x, constants = builder.emit(relax.Call(layer_norm.op, args, layer_norm.attrs)), []
        else:
            x = visit(x)
        args = [x, *(relax.const(c) for c in constants)]
        return builder.emit(relax.call_tir(gvs[name], args, relax.TensorType(x.ty.shape, out)))

    return rewrite_functions(mod, match, emit, kernels, gvs)


TopByteQuantizes = counted_pass("TopByteQuantizes")(top_byte_quantizes)
