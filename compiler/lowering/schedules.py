"""Schedules for the CPU kernels a tuning database does not cover.

TVM 0.27 compiles an unscheduled CPU kernel as naive single-threaded loops (its GPU pipeline has dlight
defaults; CPU has none). Before this, every kernel a database missed (softmax, layer norm, transposes,
every kernel of an untuned build) ran on one core. Here each gets:

- a pre-packed dot-product kernel (:class:`squeezeedge.lowering.int8.PackedDot`): its inner lanes x k block
  tensorized onto the target's instruction, rows in parallel;
- reductions along one axis, and data moved into a blocked layout: the rules below;
- anything else: MetaSchedule's own parallelize/vectorize rule and postprocessors, applied once, with
  no search (the outer spatial loops fused and parallel, the inner one vectorized).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import tvm

from squeezeedge.lowering.int8 import PACKED, PackedDot
from squeezeedge.lowering.tir_walk import sblocks


def _packed_block(func) -> PackedDot | None:
    """The packed dot-product kernel a PrimFunc computes (its compute block is named after it), or None."""
    names = {b.name_hint for b in sblocks(func)}
    return next((p for p in PACKED if p.block in names), None)


SHORT_K = 256  # a reduction this short or shorter takes 8 x 1 tiles


def tensorize_packed(sch, spec: PackedDot, rows: int | None = None, columns: int | None = None) -> None:
    """Tile the packed kernel ``rows`` x ``columns`` instructions (each k step reuses a loaded weight
    vector for ``rows`` rows and an activation pair for ``columns`` vectors), tensorize the inner
    lanes x k block, run row tiles in parallel. A tile that does not divide the kernel shrinks to 1.

    Unless given: the instruction's own tile (aarch64's 4-lane ones: 8 x 4, see :class:`PackedDot`), else
    4 x 3 tiles, or 8 x 1 where the reduction is at most SHORT_K long (SqueezeBERT's Q/K/V
    and GELU convolutions, K = 192 a group, and the attention matmuls): every row tile streams all the
    weights, and 8-row tiles stream them half as often, which the short k loop could not hide (longer
    reductions gain nothing from it). MetaSchedule's own tiling onto the intrinsic fails to compile most
    candidates (vectorized loops around the intrinsic), and those that build ran far slower
    (results/PERFORMANCE-LOG.md).
    Order matters: a fused or parallel loop added after tensorize breaks TVM's reduction checks.

    A kernel fused with its epilogue (requantize, bias, GELU, residual add: what FuseOps joins to it
    once no transpose stands between, see :mod:`squeezeedge.lowering.transposes`) gets the epilogue as one
    vectorized loop nest per output, computed right after each rows x columns tile while its int32 sums
    are in L1 (after each row tile instead was slower): every other elementwise
    block is inlined into its consumer.
    """
    block = sch.get_sblock(spec.block)
    outputs = {p.name for p in sch.mod["main"].params}
    operands = {r.source.name for r in sch.get(block).reads}
    epilogue = []
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        writes = {r.source.name for r in sch.get(other).writes}
        if sch.get(other).name_hint == spec.block or writes & operands:
            continue  # a producer of the kernel's operands stays as it is
        if writes & outputs or sch.get(other).name_hint == spec.block + "_sum":
            epilogue.append(other)
        else:
            sch.compute_inline(other)
    if spec.partial:
        _tensorize_partial(sch, spec, block, epilogue, rows, columns)
        return
    *lead, n, k = sch.get_loops(block)
    n_ext, m_ext, k_ext = (int(sch.get(loop).extent) for loop in (n, lead[-1], k))
    step, intrin, tile, unroll = spec.k, spec.intrin, spec.tile, 1
    if spec.wide and k_ext % spec.wide[0] == 0:
        step, intrin, tile, unroll = spec.wide
    block_rows = spec.row_block  # (a multiple of them: packed_for_layer)
    if rows is None or columns is None:
        rows, columns = tile or ((8, 1) if k_ext <= SHORT_K else (4, 3))
    columns = next(c for c in (columns, 2, 1) if n_ext % (c * spec.lanes) == 0)
    # a tile that does not divide the rows takes the most rows that do (8-row tiles: 6 at 12 tokens, 5 at 20;
    # where they took 4, the A76 static counted 33.50 -> 31.63 M at 12, 55.78 -> 54.14 M at 20)
    rows = next((r for r in range(rows, 1, -1) if m_ext % r == 0 and r % max(block_rows, 1) == 0), 1) \
        if m_ext > rows else m_ext if block_rows else 1
    r_o, *r_i = sch.split(lead[-1], [None, rows]) if rows > 1 else [lead[-1]]  # unit loops break tensorize
    if block_rows and rows > block_rows:  # row blocks of the instruction's rows, the last one tensorized
        r_i = sch.split(r_i[0], [None, block_rows])
    n_o, *n_m, n_i = sch.split(n, [None, columns, spec.lanes] if columns > 1 else [None, spec.lanes])
    k_o, k_i = sch.split(k, [None, step])
    k_u = []
    trips = int(sch.get(k_o).extent)  # unrolled by the most steps up to ``unroll`` that leave a loop
    unroll = next(u for u in range(unroll, 0, -1) if trips % u == 0 and (trips // u > 1 or u == 1))
    if unroll > 1:
        k_o, *k_u = sch.split(k_o, [None, unroll])
    if block_rows:
        sch.reorder(*lead[:-1], r_o, n_o, k_o, *k_u, *r_i[:-1], *n_m, r_i[-1], n_i, k_i)
    else:
        sch.reorder(*lead[:-1], r_o, n_o, k_o, *k_u, *r_i, *n_m, n_i, k_i)
    r_o = sch.fuse(*lead[:-1], r_o) if lead[:-1] else r_o  # batch and heads (attention) run in parallel too
    for epi in epilogue:
        sch.reverse_compute_at(epi, n_o)
        inner = sch.get_loops(epi)[-1]
        # float epilogue lanes: 8 (two float32 vectors, one float16), else the instruction's (3 x 4 columns)
        width = next((w for w in (max(8, spec.lanes), spec.lanes) if int(sch.get(inner).extent) % w == 0), 0)
        if width:
            sch.vectorize(sch.split(inner, [None, width])[1])
    sch.parallel(r_o)
    if spec.instruction == "sdot" and rows > 1:  # x86 addresses any offset: its rows stay where they are
        _pack_rows(sch, block, r_o, rows, step)
    sch.decompose_reduction(block, k_o)
    sch.tensorize(r_i[-1] if block_rows else n_i, intrin)
    for loop in (*k_u, *(r_i[:-1] if block_rows else r_i), *n_m):
        sch.unroll(loop)


def _pack_rows(sch, block, tiles, rows: int, step: int) -> None:
    """The activations' rows of each row tile copied once, under ``tiles``, to a buffer laid out
    ``[.., row tile, K / step, rows, step]``: a reduction step's ``rows`` vectors then sit ``step`` bytes
    apart, each pair one ldp, where K bytes apart (ldp reaches 1,008) all but the first pair took two
    single loads. The copy is K bytes a row; the tile's loop reads the row K / step times an output tile."""
    cache = sch.cache_read(block, 0, "global")
    sch.compute_at(cache, tiles, preserve_unit_loops=True)
    sch.transform_layout(cache, ("write", 0), lambda *i: (*i[:-2], i[-2] // rows, i[-1] // step, i[-2] % rows,
                                                             i[-1] % step))
    *_, r, k = sch.get_loops(cache)
    if step == 4 and rows % 4 == 0 and int(sch.get(k).extent) % 16 == 0:  # 4-byte steps: word transposes
        from squeezeedge.lowering.intrinsics import PACK_ROWS_INTRIN

        k_o, k_u, k_m, k_i = sch.split(k, [None, 2, 4, 4])  # 2 blocks a trip: a row's 32 bytes one ldp
        r_o, r_i = sch.split(r, [None, 4])
        sch.reorder(k_o, r_o, k_u, r_i, k_m, k_i)
        sch.tensorize(r_i, PACK_ROWS_INTRIN)
        sch.unroll(k_u)
        return
    inner = sch.get_loops(cache)[-1]
    if int(sch.get(inner).extent) % 16 == 0:
        sch.vectorize(sch.split(inner, [None, 16])[1])


def _tensorize_partial(sch, spec: PackedDot, block, blocks: list, rows: int | None, columns: int | None) -> None:
    """Tile a kernel with partial sums an output (:class:`PackedDot` ``partial``) rows x columns outputs
    (the instruction's tile unless given) along its epilogue's loop nest: each tile's partial sums are
    computed under the epilogue's tile loop (``compute_at``: the sum's constant-indexed reads defeat
    ``reverse_compute_at``), the reduction outside the tile so its accumulators stay in registers, then
    the sum of 4 outputs' partial sums tensorized (pairwise adds), then the epilogue."""
    total = next(b for b in blocks if sch.get(b).name_hint == spec.block + "_sum")
    epilogue = [b for b in blocks if not sch.get(b).same_as(sch.get(total))] or [total]
    if len(epilogue) != 1:
        raise ValueError(f"{len(epilogue)} outputs: the partial sums are computed under one")
    (anchor,) = epilogue
    *lead, m, n = sch.get_loops(anchor)
    rows, columns = (rows, columns) if rows and columns else spec.tile
    m_ext, n_ext = (int(sch.get(loop).extent) for loop in (m, n))
    rows = next(r for r in (rows, 2, 1) if m_ext % r == 0)
    columns = next(c for c in (columns, 2, 1) if n_ext % c == 0)
    m_o, m_i = sch.split(m, [None, rows])
    n_o, n_i = sch.split(n, [None, columns])
    sch.reorder(m_o, n_o, m_i, n_i)
    if not sch.get(anchor).same_as(sch.get(total)):
        sch.compute_at(total, n_o, preserve_unit_loops=True)
    sch.compute_at(block, n_o, preserve_unit_loops=True)
    *_, t_m, t_n, j, kb, t = sch.get_loops(block)
    sch.reorder(kb, t_m, t_n, j, t)
    tiles = sch.fuse(*lead, m_o) if lead else m_o
    sch.parallel(tiles)
    if rows > 1:
        _pack_rows(sch, block, tiles, rows, spec.k)
    if not sch.get(anchor).same_as(sch.get(total)) and columns % 4 == 0:
        sch.vectorize(sch.split(n_i, [None, 4])[1])
    sch.decompose_reduction(block, kb)
    if int(sch.get(kb).extent) % 2 == 0:  # two 16-product steps a loop trip: 121 -> 118 M at 16 tokens (A72)
        sch.unroll(sch.split(kb, [None, 2])[1])
    sch.tensorize(j, spec.intrin)
    for loop in (t_m, t_n):
        sch.unroll(loop)
    if columns % 4 == 0:
        from squeezeedge.lowering.intrinsics import NEON_LANES_SUM_INTRIN

        *_, s_m, s_n = sch.get_loops(total)
        s_o, s_i = sch.split(s_n, [None, 4])
        sch.tensorize(s_i, NEON_LANES_SUM_INTRIN)
        sch.unroll(s_m)
        sch.unroll(s_o)


def _inline_elementwise(sch, keep_broadcast: bool = False) -> None:
    """Inline every spatial block with exactly one consumer into it (outputs and reductions stay).

    TVM fuses a chain of ops (reshape, quantize, cast, subtract, transpose) into one kernel but keeps a
    block and a buffer per op: scheduled one by one, each was a parallel loop of its own, 6-7 fork-joins
    and as many passes over memory per kernel. A value read by two blocks (softmax's exp) is kept, not
    computed twice. With ``keep_broadcast`` (one loop over rows, where a kept block costs no pass of its
    own) a block smaller than its consumer stays too: a per-row reciprocal is computed once a row, not
    once an element."""
    outputs = {p.name for p in sch.mod["main"].params}
    size = lambda b: int(np.prod([int(d) for w in sch.get(b).writes for d in w.source.shape]))  # noqa: E731
    for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))):
        stmt = sch.get(block)
        if any(int(iv.iter_type) != 0 for iv in stmt.iter_vars) or {w.source.name for w in stmt.writes} & outputs \
                or len(sch.get_consumers(block)) != 1:
            continue
        if keep_broadcast and size(block) < size(sch.get_consumers(block)[0]):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 (not inlinable: it stays a loop nest of its own)
            continue


def _generic(one: tvm.IRModule, tvm_target):
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    first = Schedule(one)
    _inline_elementwise(first)
    one = first.mod

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


# NEON's rows (layer norm, softmax): their output loop's 8-lane step unrolled 4 times. One step a trip
# addressed each of its 3 or 4 operands from the loop index (an add each) and counted the trip: 17
# instructions for 8 layer-norm outputs (A76, 16 tokens: layer norm 1.03 -> 0.83 M)
ROW_UNROLL = 4


def _reductions(one: tvm.IRModule, unroll: int = 1):
    """A schedule for a kernel whose reductions all run along one axis of a row-major tensor, or None.

    MetaSchedule's default rule gives each output its own serial, scalar reduction loop. Here:

    - a reduction across rows (layer norm over NCW's channel axis, once :mod:`squeezeedge.lowering.transposes`
      has removed the transposes around it; a matmul's column of B) walks rows in the outer loop and
      32 adjacent outputs in the inner one (16, 8 or 4 where they do not divide by 32: a 16- or 12-token
      bucket), which LLVM vectorizes: contiguous loads, the same summation order per output;
    - a reduction along rows (layer norm over NWC's channels, softmax) keeps 16 partial results per
      output (rfactor), the inner loop over adjacent elements vectorizable, then adds the 16;

    the elementwise blocks get parallel outer and vectorized inner loops."""
    from tvm.s_tir import Schedule

    sch = Schedule(one)
    _inline_elementwise(sch)
    plans = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        iters = sch.get(block).iter_vars
        if not any(int(iv.iter_type) == 2 for iv in iters):  # spatial
            plans.append((block, None))
            continue
        if len(loops) < 2 or len(iters) != len(loops) or int(iters[-1].iter_type) != 2 \
                or any(int(iv.iter_type) != 0 for iv in iters[:-1]):
            return None
        s_var, k_var = iters[-2].var, iters[-1].var
        reads = [r.region for r in sch.get(block).reads if len(r.region) > 1]
        if any(r[-1].min.same_as(s_var) and any(_uses(d.min, k_var) for d in r[:-1]) for r in reads) \
                and _width(int(sch.get(loops[-2]).extent)):
            plans.append((block, "column"))
        elif any(_uses(r[-1].min, k_var) for r in reads) and int(sch.get(loops[-1]).extent) % 2 == 0 \
                and not any(_uses(d.min, k_var) for r in reads for d in r[:-1]):
            plans.append((block, "row"))
        else:
            return None
    if all(plan is None for _, plan in plans):
        return None
    if all(plan in (None, "row") for _, plan in plans):
        try:
            return _rows(one, unroll)
        except Exception:  # noqa: BLE001 (a shape the one-loop form does not take: the passes below)
            pass
    if any(plan == "row" and int(sch.get(sch.get_loops(b)[-1]).extent) % 16 for b, plan in plans):
        return None  # rows of 12, 20, 24 or 40 take the one-loop form only
    for block, plan in plans:
        if plan == "row":
            *lead, k = sch.get_loops(block)
            k_o, k_i = sch.split(k, [None, 16])
            rf = sch.rfactor(k_i, len(lead))
            rf_loops = [loop for loop in sch.get_loops(rf) if int(sch.get(loop).extent) > 1]
            sch.parallel(rf_loops[0])
            continue
        *lead, last = sch.get_loops(block) if plan is None else sch.get_loops(block)[:-1]
        width = _width(int(sch.get(last).extent), 32 if plan else 16)
        outer, inner = sch.split(last, [None, width]) if width else (last, None)
        k = sch.get_loops(block)[-1] if plan else None
        if plan:
            sch.reorder(outer, k, inner)
        sch.parallel(sch.fuse(*lead, outer) if lead else outer)
        if plan:
            sch.decompose_reduction(block, k)
        elif inner is not None:
            sch.vectorize(inner)
    return sch


def _width(extent: int, most: int = 32) -> int | None:
    """The inner, vectorized loop's length for ``extent`` adjacent outputs: the largest of ``most``, 16, 8 or
    4 (NEON's 4 fp32 lanes) that divides it, else None."""
    return next((w for w in (32, 16, 8, 4) if w <= most and extent % w == 0), None)


def _rows(one: tvm.IRModule, unroll: int = 1):
    """Softmax and layer norm along the last axis as one parallel loop over rows: each row's partial
    reductions (8 lanes, vectorized; 4 in rows of 12 or 20, where softmax's were scalar loops: 1.19 M of an
    A76 inference at 20 tokens where 16 tokens' took 0.31 M), its elementwise work and its output computed
    together while the row is in L1, instead of a parallel pass over the whole tensor per step (4 fork-joins
    a kernel)."""
    from tvm.s_tir import Schedule

    sch = Schedule(one)
    _inline_elementwise(sch, keep_broadcast=True)
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    spatial = [b for b in blocks if all(int(iv.iter_type) == 0 for iv in sch.get(b).iter_vars)]
    rfs = []
    for b in blocks:
        if b not in spatial:
            k = sch.get_loops(b)[-1]
            _, k_i = sch.split(k, [None, _width(int(sch.get(k).extent), 8) or 2])  # 2: rows of 14
            rfs.append(sch.rfactor(k_i, len(sch.get_loops(b)) - 2))
    rows = sch.fuse(*sch.get_loops(blocks[-1])[:-1])
    under = lambda b: any(sch.get(loop).same_as(sch.get(rows)) for loop in sch.get_loops(b))  # noqa: E731
    for b in reversed(sch.get_child_blocks(sch.get_sblock("root"))[:-1]):
        if not under(b):  # (blocks of one multi-output compute share its loops already)
            sch.compute_at(b, rows, preserve_unit_loops=False)
    for rf in rfs:  # under the row loop: k_i, k_o -> k_o, k_i (the 8 partial results as one vector)
        *_, k_i, k_o = sch.get_loops(rf)
        sch.reorder(k_o, k_i)
        sch.vectorize(k_i)
    done = []
    for b in spatial:
        inner = sch.get_loops(b)[-1]
        extent = int(sch.get(inner).extent)
        if any(sch.get(inner).same_as(d) for d in done):
            continue
        if not sch.get(inner).same_as(sch.get(rows)) and extent % 2 == 0:
            width = _width(extent, 8) or 2
            times = next(u for u in (unroll, 4, 2, 1) if u <= unroll and extent % (width * u) == 0)
            *_, repeat, lanes = sch.split(inner, [None, times, width])
            sch.vectorize(lanes)
            done.append(sch.get(lanes))
            if times > 1:
                sch.unroll(repeat)
    sch.parallel(rows)
    return sch



def _packing(one: tvm.IRModule):
    """A schedule for a kernel that only moves data into a blocked layout with small innermost tiles
    (the attention's second operand packed [..., K/k, lanes, k] for the pair kernel: 8 x 2 on AVX2,
    16 x 4 on VNNI), or None.

    MetaSchedule's rule fuses all loops, then splits for vectorizing: the index arithmetic of the
    blocked layout becomes divisions by non-constant-foldable fused extents, and the 16-lane "vector"
    is a gather of 2-element runs from 8 rows. Here the leading loops run in parallel, the row loop stays,
    and the small tile (<= 64 elements) is unrolled with its constant offsets (the same bytes, several
    times faster)."""
    from tvm.s_tir import Schedule

    sch = Schedule(one)
    _inline_elementwise(sch)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) != 1 or any(int(iv.iter_type) != 0 for iv in sch.get(blocks[0]).iter_vars):
        return None
    loops = sch.get_loops(blocks[0])
    extents = [int(sch.get(loop).extent) for loop in loops]
    if len(loops) < 4 or extents[-1] * extents[-2] > 64:
        return None
    sch.parallel(sch.fuse(*loops[:-3]))
    sch.unroll(loops[-1])
    sch.unroll(loops[-2])
    return sch


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(expr))


def reschedule(mod: tvm.IRModule, schedule_one) -> tuple[tvm.IRModule, Counter]:
    """Give every PrimFunc of ``mod`` that is not scheduled yet to ``schedule_one``, one kernel at a time.

    ``schedule_one(one)`` gets the kernel as the "main" function of a module of its own and returns
    (Schedule or None, outcome); a kernel it scheduled is replaced and marked scheduled. Returns the
    module and how many kernels had each outcome. Used for tuned (database) and default schedules.
    """
    counts: Counter = Counter()
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        sch, outcome = schedule_one(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
        counts[outcome] += 1
        if sch is None:
            continue
        new = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        keep = func.attrs and "global_symbol" in func.attrs
        updates[gv] = new.with_attr("global_symbol", func.attrs["global_symbol"]) if keep \
            else new.without_attr("global_symbol")
    for gv, func in updates.items():
        mod[gv] = func
    return mod, counts


def schedule_kernel(one: tvm.IRModule, tvm_target):
    """The default schedule of one kernel (``one["main"]``): (Schedule, kind) with kind ``tensorized``
    (a packed dot-product kernel), ``tiled`` (another multiply-accumulate kernel, :func:`tile_mac`) or
    ``parallel`` (everything else); (None, "naive") when no rule takes it. Build uses it for every
    kernel a database does not cover, and tune measures it first so that a database never holds a
    schedule slower than this one."""
    from tvm.s_tir import Schedule

    from squeezeedge.lowering import intrinsics  # noqa: F401  (the dot-product intrinsics)

    lanes = vector_lanes(tvm_target)
    registers = 16 if lanes == 8 else 32  # AVX2 has 16 vector registers; AVX-512 and NEON 32
    neon = aarch64(tvm_target)
    spec = _packed_block(one["main"])
    try:
        if spec is not None:
            sch = Schedule(one)
            tensorize_packed(sch, spec)
            return sch, "tensorized"
        if _mac_block(Schedule(one)) is not None:
            try:
                sch = Schedule(one)
                tile_mac(sch, lanes, registers)
                return sch, "tiled"
            except Exception:  # noqa: BLE001 (a loop nest it does not take: the rules below)
                pass
        try:
            sch = _reductions(one, ROW_UNROLL if neon else 1)
        except Exception:  # noqa: BLE001 (a pattern this rule misjudged: MetaSchedule's rule instead)
            sch = None
        sch = sch or _packing(one) or _generic(one, tvm_target)
    except Exception:  # noqa: BLE001 (an unschedulable kernel keeps TVM's naive loops)
        return None, "naive"
    return (sch, "parallel") if sch is not None else (None, "naive")


def default_schedules(mod: tvm.IRModule, tvm_target) -> tuple[tvm.IRModule, dict[str, int]]:
    """Schedule every CPU PrimFunc of a fused module that is not scheduled yet (see the module doc).

    Returns the module and counts: ``tensorized`` packed kernels, ``tiled`` other multiply-accumulate
    kernels (:func:`tile_mac`), ``parallel`` others, ``naive`` ones left as they were (a schedule that
    failed: the kernel still compiles, single-threaded).
    """
    mod, counts = reschedule(mod, lambda one: schedule_kernel(one, tvm_target))
    return mod, {k: counts[k] for k in ("tensorized", "tiled", "parallel", "naive")}


def aarch64(tvm_target) -> bool:
    """Whether ``tvm_target`` is an LLVM CPU target for aarch64 (the boards' NEON cores)."""
    return tvm_target.kind.name == "llvm" and str(tvm_target.attrs.get("mtriple", "")).startswith("aarch64")


def vector_lanes(tvm_target) -> int:
    """fp32 lanes of the target's widest vector register: 16 (AVX-512), 8 (AVX2), 4 (NEON, SSE)."""
    if tvm_target.kind.name != "llvm":
        return 4
    has = lambda f: bool(tvm.target.codegen.llvm_cpu_has_features([f], tvm_target))  # noqa: E731
    if str(tvm_target.attrs.get("mtriple", "x86_64")).startswith("x86_64"):
        return 16 if has("avx512f") else 8 if has("avx2") else 4
    return 4


def _mac_block(sch):
    """The kernel's multiply-accumulate block (a conv1d/matmul with reduction axes), or None."""
    blocks = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
              if any(int(iv.iter_type) == 2 for iv in sch.get(b).iter_vars)]
    if len(blocks) != 1 or not any(op in sch.get(blocks[0]).name_hint for op in ("conv", "matmul")):
        return None
    return blocks[0]


def tile_mac(sch, lanes: int, registers: int = 32) -> None:
    """Register-tiled, vectorized multiply-accumulate for a conv1d/matmul kernel with no dot-product
    instruction (fp32 everywhere; integer kernels that cannot be packed).

    The output's innermost axis (the sequence in NCW convolutions, the columns of a matmul) is split into
    ``columns`` vectors of ``lanes``; the axis before it (output channels, rows) into ``rows``. Per
    reduction step the kernel loads ``columns`` vectors of one operand, broadcasts ``rows`` scalars of
    the other, and does rows x columns vector multiply-adds into accumulators held in registers (a
    local buffer LLVM keeps in registers once the tile is unrolled). The epilogue (bias, GELU, residual)
    is computed as each tile's accumulators are written out; row tiles run in parallel.

    Tiles: 2 vectors x up to 8 rows on x86. On NEON (4 lanes, 32 registers) the reduction is unrolled 4
    steps a loop iteration and, where the broadcast operand runs along the reduction (the weights of a
    convolution, the rows of a matmul's left operand), each row's 4 values are one vector load and fmla
    takes them from its lanes: 8 rows x 2 vectors (16 accumulators, 8 loaded rows), 82 instructions per
    64 fmla in the loop against 136 per 96 for 6 x 4 tiles with a scalar load a row a step (4 x 4: 84 per
    64; 6 x 4 spills); the full-size Pi 4 fp32 library at 128 tokens, bench --emulate on the Cortex-A72:
    1,434 M -> 1,305 M instructions. Elsewhere 6 rows x 4 vectors (24 accumulators: before the lane loads,
    8 x 2 counted 1,915 M on the same library, 4 x 4 1,702 M, 6 x 4 1,574 M, whole process halved).
    """
    block = _mac_block(sch)
    if block is None:
        raise ValueError("no single conv/matmul block")
    _inline_around(sch, block)
    iters = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    spatial = [lp for lp, iv in zip(loops, iters) if int(iv.iter_type) == 0]
    reduce = [lp for lp, iv in zip(loops, iters) if int(iv.iter_type) == 2]
    if len(spatial) < 2 or len(spatial) + len(reduce) != len(loops):
        raise ValueError("unexpected loop nest")
    *lead, row, col = spatial
    r_ext, c_ext = int(sch.get(row).extent), int(sch.get(col).extent)
    vec = lanes if c_ext % lanes == 0 else next((v for v in (8, 4) if v < lanes and c_ext % v == 0), 1)
    if vec == 1:  # too few columns (a classifier's 2 logits): vector partial sums along k instead
        _partial_sums_along_k(sch, loops[-1], reduce[-1], lanes, c_ext)
        return
    big = [i for i, lp in enumerate(reduce) if int(sch.get(lp).extent) > 1]
    unroll = lanes == 4 and big and int(sch.get(reduce[big[-1]]).extent) % 4 == 0
    scalar = _lane_operand(sch, block, iters[len(spatial) - 1].var) if unroll else None
    # NEON's 4 lanes: 8 rows x 2 vectors when the scalars come from vector lanes (16 accumulators, 8 rows'
    # 4 scalars, 2 vectors; 6 x 3 where the columns are 12, a 12-token bucket's, 4 x 5 where they are 20:
    # 206 -> 182 M for fp32 at 20 tokens on the A72), else 6 x 4 (24 accumulators); wider vectors: 2
    columns = next(c for c in (((2, 3, 5, 1) if scalar is not None else (4, 2, 1)) if lanes == 4 else (2, 1))
                   if c_ext % (c * vec) == 0)
    budget = {1: 8, 2: 8, 3: 6, 5: 4}[columns] if scalar is not None else max(registers * 3 // 4 // columns, 1)
    rows = next(r for r in (8, 6, 4, 2, 1) if r <= budget and r_ext % r == 0)
    r_o, r_i = sch.split(row, [None, rows])
    c_o, c_m, c_i = sch.split(col, [None, columns, vec])
    unroll_k = []  # NEON: 4 reduction steps a loop iteration, the loop's own instructions a quarter as often
    if unroll:
        i = big[-1]
        k_o, k_u = sch.split(reduce[i], [None, 4])
        reduce = [*reduce[:i], k_o, *reduce[i + 1:]]
        unroll_k = [k_u]
    sch.reorder(*lead, r_o, c_o, *reduce, *unroll_k, r_i, c_m, c_i)
    loaded = _load_as_vectors(sch, block, scalar, reduce[-1]) if scalar is not None else None
    acc = sch.cache_write(block, 0, "local")
    for epi in sch.get_child_blocks(sch.get_sblock("root")):
        if not any(b is not None and sch.get(epi).same_as(sch.get(b)) for b in (block, acc, loaded)):
            sch.reverse_compute_inline(epi)  # bias, GELU, residual computed straight from the accumulators
    sch.reverse_compute_at(acc, c_o)
    # parallel and vectorize while the block still has its init: TVM refuses both on the update after
    sch.parallel(sch.fuse(*lead, r_o) if lead else r_o)
    sch.vectorize(c_i)
    init = sch.decompose_reduction(block, reduce[0])
    *_, a_r, a_c = sch.get_loops(acc)
    a_m, a_i = sch.split(a_c, [None, vec])
    *_, i_r, i_m, i_i = sch.get_loops(init)
    sch.vectorize(i_i)
    sch.vectorize(a_i)
    for loop in (*unroll_k, r_i, c_m, i_r, i_m, a_r, a_m):
        sch.unroll(loop)


def _inline_around(sch, block) -> None:
    """Inline a MAC block's operand producers (padding copies) and the epilogue's inner steps."""
    outputs = {p.name for p in sch.mod["main"].params}
    operands = {r.source.name for r in sch.get(block).reads}
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(other).same_as(sch.get(block)):
            continue
        writes = {r.source.name for r in sch.get(other).writes}
        if writes & operands or not writes & outputs:
            sch.compute_inline(other)


def _partial_sums_along_k(sch, k, last_reduce, lanes: int, columns: int) -> None:
    """A MAC kernel whose outputs do not fill a vector: vector partial sums along k (rfactor)."""
    if int(sch.get(k).extent) % lanes or not sch.get(k).same_as(sch.get(last_reduce)):
        raise ValueError(f"{columns} columns do not fill a vector and k does not split into vectors")
    _, k_i = sch.split(k, [None, lanes])
    rf = sch.rfactor(k_i, 0)
    sch.vectorize(sch.get_loops(rf)[-1])


def _lane_operand(sch, block, col_var) -> int | None:
    """The read of a MAC block that is broadcast (does not follow the output's vector axis) and runs
    contiguously along the reduction (its last non-unit axis indexed by k): its index, or None."""
    k_vars = [iv.var for iv in sch.get(block).iter_vars if int(iv.iter_type) == 2]
    for i, read in enumerate(sch.get(block).reads):
        dims = [d for d, ext in zip(read.region, read.source.shape) if int(ext) > 1]
        if dims and not any(_uses(d.min, col_var) for d in read.region) \
                and any(_uses(dims[-1].min, k) for k in k_vars):
            return i
    return None


def _load_as_vectors(sch, block, read: int, k_loop):
    """NEON's fmla takes its scalar from a vector lane: the broadcast operand's 4 values of an unrolled
    reduction step loaded as one vector a row, into a buffer under the reduction loop, instead of one
    scalar load a row a step. "global" scope: TVM puts a small global buffer on the stack (LLVM keeps it
    in registers) and a "local" one in a workspace allocation, whose stores LLVM must keep."""
    cache = sch.cache_read(block, read, "global")
    sch.compute_at(cache, k_loop, preserve_unit_loops=True)
    loops = sch.get_loops(cache)[-len(sch.get(cache).writes[0].region):]
    last = max(j for j, lp in enumerate(loops) if int(sch.get(lp).extent) > 1)
    sch.vectorize(sch.fuse(*loops[last:]) if last < len(loops) - 1 else loops[last])
    for lp in loops[:last]:
        sch.unroll(lp)
    return cache
