"""StackBuffers: a kernel's small global buffers on the stack, not a runtime workspace call each time their
scope runs (squeezeedge.lowering.stack_buffers)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import tvm
from tvm import te

from squeezeedge.lowering.int8 import SDOT, _te_packed
from squeezeedge.lowering.pipeline import tir_lowering
from squeezeedge.lowering.schedules import default_schedules
from squeezeedge.lowering.stack_buffers import STACK_BYTES, before_lower_builtin

A76 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"],
       "num-cores": 4}
WORKSPACE = "TVMBackendAllocWorkspace"


def _a76_asm(lowering: bool) -> str:
    target = tvm.target.Target(A76)
    mod, _ = default_schedules(tvm.IRModule({"main": _te_packed((1, 16, 768), 768, 4, "main", SDOT)}), target)
    with tir_lowering(target) if lowering else contextlib.nullcontext():
        return tvm.tirx.build(mod, target=target).inspect_source("asm")


def test_a76_row_tiles_copy_to_the_stack():
    """Each 8-row tile's 6 KB copy of its activations: a workspace call pair a tile under TVM's own
    lowering, none under the build's (tir_lowering), sdot either way."""
    plain, ours = _a76_asm(False), _a76_asm(True)
    assert WORKSPACE in plain
    assert WORKSPACE not in ours and "\tsdot\t" in ours


def _staged(rows: int, width: int):
    """y = (x + 1) * 2 with x + 1 staged, a row tile at a time, in a global buffer under a parallel loop."""
    x = te.placeholder((64, width), "float32", name="x")
    t = te.compute((64, width), lambda i, j: x[i, j] + 1.0, name="t")
    y = te.compute((64, width), lambda i, j: t[i, j] * 2.0, name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    i, _ = sch.get_loops(sch.get_sblock("y"))
    outer, _ = sch.split(i, [None, rows])
    sch.compute_at(sch.get_sblock("t"), outer)
    sch.parallel(outer)
    return sch.mod


@pytest.mark.parametrize("rows, width, stacked", [(8, 768, True), (16, 1024, False)])
def test_stacked_buffers_compute_the_same_in_parallel_tasks(rows, width, stacked, tmp_path):
    """Run on this machine (4 tasks at once, in a child process: the first library a process runs starts
    TVM's thread pool for good): a 24 KB tile buffer moved to the stack computes exactly what numpy does; a
    64 KB one, past STACK_BYTES, stays a workspace allocation (and is right too)."""
    assert (rows * width * 4 <= STACK_BYTES) == stacked
    target = tvm.target.Target({"kind": "llvm", "num-cores": 4})
    with before_lower_builtin():  # on any CPU: the build's tir_lowering uses it on aarch64 only
        lib = tvm.tirx.build(_staged(rows, width), target=target)
    assert (WORKSPACE in lib.inspect_source("ll")) != stacked
    lib.export_library(tmp_path / "staged.so")
    run = (
        "import numpy as np, tvm\n"
        f"lib = tvm.runtime.load_module('{tmp_path / 'staged.so'}')\n"
        f"x = np.random.default_rng(0).standard_normal((64, {width})).astype('float32')\n"
        "y = tvm.runtime.tensor(np.zeros_like(x))\n"
        "lib(tvm.runtime.tensor(x), y)\n"
        "np.testing.assert_array_equal(y.numpy(), (x + np.float32(1)) * np.float32(2))\n")
    res = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=300,
                         env=os.environ | {"TVM_NUM_THREADS": "4"})
    assert res.returncode == 0, res.stderr[-2000:]
