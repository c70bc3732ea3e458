"""fp32 1x1 convolutions on blocked weights (compiler/lowering/blocked_weights.py): the rewrite keeps the
values of a grouped convolution, and on aarch64 the kernel's 8 weight vectors a step come in paired loads
feeding lane-indexed fmla."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.blocked_weights import block_conv_weights
from squeezeedge.lowering.schedules import default_schedules

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}


def _conv(w: np.ndarray, groups: int, length: int = 16):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, w.shape[1] * groups, length), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv1d(x, relax.const(w), groups=groups))
            out = bb.emit_output(relax.op.add(y, relax.const(np.float32(0.5))))
        bb.emit_func_output(out)
    return bb.get()


def _lowered(mod, target):
    with target:
        mod = relax.get_pipeline("zero")(mod)
    called = {"main", *re.findall(r"call_tir\((?:cls\.)?(\w+)", mod["main"].script())}
    mod = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint in called})  # not the unfused kernel
    return default_schedules(mod, target)


@pytest.mark.parametrize("groups", [1, 4])
def test_blocked_convolution_equals_the_grouped_convolution(groups):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16, 1), dtype=np.float32)
    mod, n = block_conv_weights(_conv(w, groups))
    assert n == 1 and "R.nn.conv1d" not in mod.script()
    target = tvm.target.Target("llvm")
    mod, counts = _lowered(mod, target)
    assert counts["tiled"] == 1 and counts["naive"] == 0
    x = rng.standard_normal((1, 16 * groups, 16), dtype=np.float32)
    got = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    ng = 32 // groups
    ref = np.concatenate([w[g * ng:(g + 1) * ng, :, 0] @ x[0, g * 16:(g + 1) * 16] for g in range(groups)])[None]
    np.testing.assert_allclose(got, ref + 0.5, atol=1e-4, rtol=1e-5)


def test_a72_kernel_loads_blocked_weights_in_pairs_for_lane_fmla():
    w = np.random.default_rng(1).standard_normal((64, 64, 1), dtype=np.float32)
    target = tvm.target.Target(A72)
    mod, counts = _lowered(block_conv_weights(_conv(w, 1))[0], target)
    assert counts["tiled"] == 1
    kernel = next(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    asm = tvm.tirx.build(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}),
                         target=target).inspect_source("asm")
    assert re.search(r"fmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[3\]", asm)
    # per 4 reduction steps: 8 weight vectors in 4 ldp and 4 ldp of 2 token vectors; no single q loads left
    assert len(re.findall(r"\bldp\s+q", asm)) >= 8 and not re.search(r"\bldr\s+q", asm.split("fmla", 1)[1])


def test_convolutions_that_do_not_fit_are_left_alone():
    w = np.random.default_rng(2).standard_normal((32, 6, 1), dtype=np.float32)  # K / G = 6: not 4s
    _, n = block_conv_weights(_conv(w, 1))
    assert n == 0
