"""x86 VNNI: our pre-packed int8 kernel tensorizes onto vpdpbusd with the wheel's LLVM, and is exact."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from compiler import intrinsics  # noqa: F401  (the byte-vector dot_16x4_vnni)
from compiler.int8 import _pack, _te_packed, has_vnni

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
    assert has_vnni(target) and not has_vnni(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
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
