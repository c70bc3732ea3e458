"""compiler/lowering/int8.py: an aarch64 attention matmul whose keys are no multiple of the packed kernel's
4 (a 14-token bucket) is padded with each operand's zero point (14 keys -> 16: Q K^T's output columns, P V's
reduction), runs on the packed kernel and gives exactly the product of the dequantized operands; the extra
output columns are dropped. The kernels run here as plain TIR (no sdot): what is checked is the padding."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from squeezeedge.lowering.int8 import NEON16, SDOT, integerize


@pytest.mark.parametrize("packed", [SDOT, NEON16])
@pytest.mark.parametrize("shape_a, shape_b, za, zb", [((1, 2, 14, 64), (1, 2, 64, 14), 0, 0),  # Q K^T: N = 14
                                                       ((1, 2, 14, 14), (1, 2, 14, 64), -128, 5)])  # P V: K = 14
def test_keys_padded_to_the_packed_kernel_give_the_exact_product(packed, shape_a, shape_b, za, zb):
    sa, sb = 0.02, 0.03
    bb = relax.BlockBuilder()
    a_var, b_var = relax.Var("a", relax.TensorType(shape_a, "int8")), relax.Var("b", relax.TensorType(shape_b, "int8"))
    deq = lambda v, s, z: relax.op.dequantize(v, relax.const(np.float32(s)), relax.const(np.int8(z)))  # noqa: E731
    with bb.function("main", [a_var, b_var]):
        bb.emit_func_output(relax.op.matmul(deq(a_var, sa, za), deq(b_var, sb, zb)))
    mod, report = integerize(bb.get(), packed=packed)
    script = mod["main"].script()
    assert report.matmul_activation == 1 and report.packed == 1 and "R.nn.pad" in script
    assert ("R.strided_slice" in script) == (shape_b[-1] % 4 != 0)  # Q K^T's extra columns dropped
    rng = np.random.default_rng(9)
    a = rng.integers(-128, 128, shape_a).astype(np.int8)
    b = rng.integers(-128, 128, shape_b).astype(np.int8)
    a[..., 0, :], b[..., :, 0] = -128, -128  # the largest products along one output
    ex = tvm.compile(relax.get_pipeline("zero")(mod), target="llvm")
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    ref = ((a.astype(np.float64) - za) * sa) @ ((b.astype(np.float64) - zb) * sb)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_the_mask_is_kept_one_value_a_key():
    """narrow_masks: logical_and(all-true [1, 1, S, S], m [1, 1, 1, S]) read by a where read by the scores' add
    is m: the where and the add broadcast one value a key; the scores are the same."""
    import numpy as np
    import tvm
    from tvm import relax

    from squeezeedge.lowering.masks import narrow_masks

    bb = relax.BlockBuilder()
    m = relax.Var("m", relax.TensorType((1, 1, 1, 8), "bool"))
    scores = relax.Var("s", relax.TensorType((1, 2, 8, 8), "float32"))
    with bb.function("main", [m, scores]):
        with bb.dataflow():
            both = bb.emit(relax.op.logical_and(relax.const(np.ones((1, 1, 8, 8), bool)), m))
            where = bb.emit(relax.op.where(both, relax.const(0.0, "float32"), relax.const(-1e30, "float32")))
            out = bb.emit_output(bb.emit(relax.op.add(scores, where)))
        bb.emit_func_output(out)
    mod = bb.get()
    new, n = narrow_masks(mod)
    assert n == 1 and "R.logical_and" not in new["main"].script() and "(1, 1, 1, 8)" in new["main"].script()
    args = (np.arange(8).reshape(1, 1, 1, 8) % 3 > 0, np.random.default_rng(0).random((1, 2, 8, 8)).astype("float32"))
    run = lambda md: relax.VirtualMachine(tvm.compile(md, target="llvm"), tvm.cpu())["main"](  # noqa: E731
        *(tvm.runtime.tensor(a) for a in args)).numpy()
    np.testing.assert_array_equal(run(new), run(mod))
