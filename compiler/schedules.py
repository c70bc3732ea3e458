"""Schedules for the CPU kernels a tuning database does not cover, and the tuning search space.

TVM 0.27 compiles an unscheduled CPU kernel as naive single-threaded loops (its GPU pipeline has dlight
defaults; CPU has none). Before this, every kernel a database missed (softmax, layer norm, transposes,
every kernel of an untuned build) ran on one core. Here each gets:

- a pre-packed dot-product kernel (:class:`compiler.int8.PackedDot`): its inner lanes x k block
  tensorized onto the target's instruction, rows in parallel;
- anything else: MetaSchedule's own parallelize/vectorize rule and postprocessors, applied once, with
  no search (the outer spatial loops fused and parallel, the inner one vectorized).
"""

from __future__ import annotations

import tvm

from .int8 import PACKED, PackedDot


def _packed_block(func) -> PackedDot | None:
    script = func.script()
    return next((p for p in PACKED if f'T.sblock("{p.block}")' in script), None)


def tensorize_packed(sch, spec: PackedDot) -> None:
    """Split the packed kernel's output and reduction loops by the instruction's lanes and k, tensorize
    the inner block, run rows in parallel."""
    block = sch.get_sblock(spec.block)
    *lead, n, k = sch.get_loops(block)
    n_o, n_i = sch.split(n, [None, spec.lanes])
    k_o, k_i = sch.split(k, [None, spec.k])
    sch.reorder(*lead, n_o, k_o, n_i, k_i)
    rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    sch.parallel(rows)
    sch.decompose_reduction(block, k_o)
    sch.tensorize(n_i, spec.intrin)


def _generic(one: tvm.IRModule, tvm_target):
    from tvm.s_tir import meta_schedule as ms

    ctx = ms.TuneContext(
        mod=one, target=tvm_target, task_name="default", rand_state=0,
        space_generator=ms.space_generator.PostOrderApply(
            sch_rules=[ms.schedule_rule.ParallelizeVectorizeUnroll(
                max_jobs_per_core=16, max_vectorize_extent=64, unroll_max_steps=[0], unroll_explicit=True)],
            postprocs=[ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
                       ms.postproc.RewriteReductionBlock()],
            mutator_probs={}))
    (sch,) = ctx.space_generator.generate_design_space(one)
    for post in ctx.space_generator.postprocs:
        if not post.apply(sch):
            return None
    return sch


def default_schedules(mod: tvm.IRModule, tvm_target) -> tuple[tvm.IRModule, dict[str, int]]:
    """Schedule every CPU PrimFunc of a fused module that is not scheduled yet (see the module doc).

    Returns the module and counts: ``tensorized`` packed kernels, ``parallel`` others, ``naive`` ones
    left as they were (a schedule that failed: the kernel still compiles, single-threaded).
    """
    from tvm.s_tir import Schedule

    from . import intrinsics  # noqa: F401  (the dot-product intrinsics)

    counts = {"tensorized": 0, "parallel": 0, "naive": 0}
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        one = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        spec = _packed_block(func)
        try:
            if spec is not None:
                sch = Schedule(one)
                tensorize_packed(sch, spec)
            else:
                sch = _generic(one, tvm_target)
        except Exception:  # noqa: BLE001 (an unschedulable kernel keeps TVM's naive loops)
            sch = None
        if sch is None:
            counts["naive"] += 1
            continue
        counts["tensorized" if spec is not None else "parallel"] += 1
        new = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        keep = func.attrs and "global_symbol" in func.attrs
        updates[gv] = new.with_attr("global_symbol", func.attrs["global_symbol"]) if keep \
            else new.without_attr("global_symbol")
    for gv, func in updates.items():
        mod[gv] = func
    return mod, counts


def tuning_space(tvm_target):
    """MetaSchedule's search space for a target: its defaults, plus tiling onto the target's packed
    dot-product instruction where MetaSchedule does not know it (AVX2's vpmaddwd intrinsic is ours).
    Returns a space generator, or the name of the default one."""
    from tvm.s_tir import meta_schedule as ms

    from .int8 import AVX2, packed_dot_for

    if packed_dot_for(tvm_target) is not AVX2:
        return "post-order-apply"  # VNNI (x86) and sdot (ARM) are in MetaSchedule's own rules
    rules = list(ms.schedule_rule.ScheduleRule.create("llvm"))
    at = next(i for i, r in enumerate(rules) if type(r).__name__ == "MultiLevelTiling")
    rules.insert(at, ms.schedule_rule.MultiLevelTilingWithIntrin(
        AVX2.intrin, structure="SSRSRS", tile_binds=None, max_innermost_factor=64, vector_load_lens=None,
        reuse_read=None, reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")))
    postprocs = list(ms.postproc.Postproc.create("llvm")) + [ms.postproc.RewriteTensorize(vectorize_init_loop=True)]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs=ms.mutator.Mutator.create("llvm"))
