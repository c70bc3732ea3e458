"""fp32 1x1 convolutions on aarch64 with their weights blocked for NEON's lane-indexed fmla
(:func:`block_conv_weights`).

NEON's fp32 kernel (schedules.tile_mac) holds an 8 x 2 register tile: 8 output channels x 8 tokens. Each
step of 4 input channels it loads 8 weight vectors, one per output channel, each the channel's 4 weights,
and fmla takes its scalar from their lanes. In the exported layout W[n, k] those 8 vectors lie K floats
apart: 8 loads. Blocked as Wb[k / 4, n, k % 4] they are 32 consecutive floats: 4 paired loads (ldp).
The loop then runs 77 instructions per 64 fmla instead of 81 (results/PERFORMANCE-LOG.md 48).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from squeezeedge.lowering.int8 import _i64
from squeezeedge.lowering.rewrite import counted_pass, rewrite_bindings

_CONV1D = tvm.ir.Op.get("relax.nn.conv1d")
BLOCK = "conv1d_blocked"  # the kernel's compute block ("conv" in it: schedules.tile_mac takes it)
K_STEP = 4  # NEON's fp32 lanes: the weights of one output channel that one vector load brings


def blocked_kernel(batch: int, k_all: int, length: int, n_out: int, groups: int, name: str) -> tvm.tirx.PrimFunc:
    """y[b, n, s] = sum over k < K/G of x[b, g(n) K/G + k, s] * wb[k / 4, n, k % 4], g(n) = n / (N/G):
    a grouped 1x1 NCW convolution on blocked weights."""
    from tvm import te

    kg, ng = k_all // groups, n_out // groups
    x = te.placeholder(_i64(batch, k_all, length), "float32", name="x")
    w = te.placeholder(_i64(kg // K_STEP, n_out, K_STEP), "float32", name="w")
    k = te.reduce_axis(_i64(0, kg), "k")
    y = te.compute(_i64(batch, n_out, length), lambda b, n, s: te.sum(
        x[b, n // ng * kg + k, s] * w[k // K_STEP, n, k % K_STEP], axis=k), name=BLOCK)
    return te.create_prim_func([x, w, y]).with_attr("global_symbol", name)


def block(w_nk: np.ndarray) -> np.ndarray:
    """[N, K/G] weights -> [K/G / 4, N, 4]."""
    n, kg = w_nk.shape
    return np.ascontiguousarray(w_nk.reshape(n, kg // K_STEP, K_STEP).transpose(1, 0, 2).astype(np.float32))


def block_conv_weights(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Every float32 1x1 NCW conv1d of ``mod[func_name]`` by a constant weight (stride 1, no padding, K/G a
    multiple of 4) as a call of :func:`blocked_kernel` on :func:`block`'s weights. Returns (module, how
    many were rewritten)."""
    kernels, gvs = {}, {}

    def match(_var, value, _values, _uses):
        if not (isinstance(value, relax.Call) and value.op.same_as(_CONV1D)
                and isinstance(value.args[1], tvm.ir.expr.Constant)):
            return None
        at, x, w = value.attrs, value.args[0], value.args[1].value.numpy()
        shape = tuple(int(d) for d in x.ty.shape)
        groups = int(at.groups)
        if w.dtype != np.float32 or str(x.ty.dtype) != "float32" or w.ndim != 3 or w.shape[2] != 1 \
                or len(shape) != 3 or at.data_layout != "NCW" or at.kernel_layout != "OIW" \
                or any(int(v) for v in at.padding) or any(int(v) != 1 for v in (*at.strides, *at.dilation)) \
                or str(at.out_dtype) not in ("", "None", "void", "float32") or w.shape[0] % groups \
                or w.shape[1] % K_STEP or w.shape[1] * groups != shape[1]:
            return None
        name = f"{BLOCK}_{shape[1]}x{shape[2]}_n{w.shape[0]}_g{groups}"
        if name not in gvs:
            kernels[name] = blocked_kernel(*shape, w.shape[0], groups, name)
        return x, name, block(w[:, :, 0]), relax.TensorType((shape[0], w.shape[0], shape[2]), "float32")

    def emit(builder, visit, item):
        x, name, weights, out_ty = item
        return builder.emit(relax.call_tir(gvs[name], [visit(x), relax.const(weights)], out_ty))

    return rewrite_bindings(mod, match, emit, func_name, kernels, gvs)


BlockConvWeights = counted_pass("BlockConvWeights")(block_conv_weights)
