"""The lowering from an artifact's ONNX to the fused Relax + TIR module build compiles and tune tunes,
declared in one place. Build and tune both run it, so a tuning database sees exactly the kernels the
build compiles.

Phases, in order (``build --dump-ir DIR`` writes the IR after each step, one file per step):

- ``import`` (each length bucket): the ONNX at the bucket's static shape (:func:`import_onnx`);
- ``integer`` (int8, each bucket): QDQ layers to integer kernels, pre-packed for the target's dot-product
  instruction (:mod:`squeezeedge.lowering.int8`);
- ``layout`` (each bucket): transposes sunk until they cancel (:mod:`squeezeedge.lowering.transposes`), then on
  aarch64 the fp32 convolutions' weights blocked for NEON (:mod:`squeezeedge.lowering.blocked_weights`);
- ``requantize`` (int8, each bucket): elementwise functions between dequantize and quantize as lookup
  tables (:mod:`squeezeedge.lowering.lookup`), 8-bit round trips dropped (``round_trips``), constants
  folded, and quantize's scale folded into the kernels' epilogues (``requantize``), a GELU epilogue
  (``gelu_quantize``), softmax (``softmax_quantize``) and layer norm (``layer_norm_quantize``);
- ``merge``: the buckets as one module (:func:`squeezeedge.lowering.lengths.merge`);
- ``legalize``: float divides by constants as multiplies (``divides``), on CPU erf as a (3, 3) rational
  (``gelu_quantize.rational_erfs``) and float softmax as one kernel with the softmax exp
  (``softmax_quantize.float_softmaxes``), TVM's fast math on CPU (exp and tanh as vectorizable
  polynomials: libm's scalar erf and exp took a third of tuned fp32 SqueezeBERT), on aarch64 every 8-bit
  quantize as the top byte of a fixed-point convert (``top_byte_quantize``), then Relax's "zero" pipeline
  spelled out: legalize, annotate, fold, fuse each kernel with its epilogue.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import tvm
from tvm import relax

from squeezeedge.artifact import Artifact
from squeezeedge.errors import CompileError
from squeezeedge.lowering.accumulator_bias import AccumulatorBias
from squeezeedge.lowering.int8 import SDOT, Integerize, RewriteReport, packed_dot_for
from squeezeedge.lowering.lengths import FIRST_BUCKET, buckets, merge
from squeezeedge.lowering.lookup import LookupTables
from squeezeedge.lowering.relax import _static_dims, import_onnx
from squeezeedge.lowering.blocked_weights import BlockConvWeights
from squeezeedge.lowering.divides import ReciprocalDivides
from squeezeedge.lowering.gelu_quantize import FoldGeluQuantize, NarrowGeluInputs, RationalErfs
from squeezeedge.lowering.masks import NarrowMasks
from squeezeedge.lowering.layer_norm_quantize import FoldLayerNormQuantize, LayerNormOutputs
from squeezeedge.lowering.requantize import FoldRequantize, FoldScaleChains
from squeezeedge.lowering.round_trips import DropRoundTrips
from squeezeedge.lowering.schedules import aarch64 as _aarch64
from squeezeedge.lowering.softmax_quantize import FloatSoftmaxes, FoldSoftmaxQuantize
from squeezeedge.lowering.top_byte_quantize import TopByteQuantizes
from squeezeedge.lowering.transposes import SinkTransposes
from squeezeedge.lowering.zip_packing import ZipPackOperands

BUCKET_PHASES = ("integer", "layout", "requantize")  # run on each length bucket's module
MODULE_PHASES = ("legalize",)  # run once the buckets are merged


def _in_target(inner, tvm_target):
    """``inner`` run with ``tvm_target`` as the current target (FoldConstant builds what it folds for it)."""
    @tvm.transform.module_pass(opt_level=0, name=inner.info.name)
    def in_target(mod, _ctx):
        with tvm_target:
            return inner(mod)
    return in_target


def bucket_pipeline(tvm_target, report: RewriteReport | None) -> tvm.transform.Sequential:
    """The per-bucket phases; with ``report`` (an int8 model, integerized) the integer ones too, their
    counts into it."""
    return _sequential(_bucket_phases(tvm_target, report), BUCKET_PHASES, "bucket")


def module_pipeline(tvm_target) -> tvm.transform.Sequential:
    """The phases after the merge: legalize, fold and fuse."""
    return _sequential(_module_phases(tvm_target), MODULE_PHASES, "module")


def step_names(tvm_target, integer: bool = True, merged: bool = False) -> list[str]:
    """Every step in order, as ``build --dump-ir`` names its files: import, the bucket phases' passes,
    merge (an any-length model), the module phases' passes."""
    bucket = _bucket_phases(tvm_target, RewriteReport() if integer else None)
    module = _module_phases(tvm_target)
    return (["import"] + [p.info.name for phase in BUCKET_PHASES for p in bucket.get(phase, [])]
            + (["merge"] if merged else []) + [p.info.name for phase in MODULE_PHASES for p in module[phase]])


def _half(tvm_target) -> bool:
    """Whether the CPU computes float16 vectors (aarch64 with FEAT_FP16: the A76, A78; not the A72)."""
    return _aarch64(tvm_target) and bool(tvm.target.codegen.llvm_cpu_has_features(["fullfp16"], tvm_target))


@contextlib.contextmanager
def tir_lowering(tvm_target):
    """While open, TVM's TIR lowering (``tvm.compile``) on aarch64 keeps a kernel's int64 indices and its
    small buffers on the stack (x86 is left as it was; the pipeline looks both passes up when it runs):

    - its default pipeline narrows every index that fits to int32 (``NarrowDataType(32)``), and each address
      was then an int32 sum sign-extended (lsl + asr or sxtw before every epilogue store; LLVM cannot fold
      an extension of a sum that may wrap). A76 static 16 tokens 37.39 -> 37.13 M;
    - ``LowerTVMBuiltin`` runs after :func:`~squeezeedge.lowering.stack_buffers.StackBuffers`: a row tile's
      copy of its activations no longer a runtime allocation a tile. A76 static 128 tokens 311.69 -> 310.22 M,
      16 tokens 35.88 -> 35.80 M."""
    from tvm import tirx

    from squeezeedge.lowering.stack_buffers import before_lower_builtin

    if not _aarch64(tvm_target):
        yield
        return
    narrow = tirx.transform.NarrowDataType
    tirx.transform.NarrowDataType = lambda bits: narrow(64)
    try:
        with before_lower_builtin():
            yield
    finally:
        tirx.transform.NarrowDataType = narrow


def _bucket_phases(tvm_target, report: RewriteReport | None) -> dict[str, list]:
    phases = {"layout": [SinkTransposes()]}  # NCW convolutions vs NWC layer norms and packed kernels
    if _aarch64(tvm_target):
        phases["layout"].append(BlockConvWeights())  # fp32 convolutions' weights for NEON's lane fmla
    if report is not None:
        phases["integer"] = [Integerize(packed_dot_for(tvm_target), report)]
        phases["requantize"] = [  # after sinking: the tables then sit where the transposes no longer are
            LookupTables(report), DropRoundTrips(report),
            _in_target(relax.transform.FoldConstant(), tvm_target),  # the epilogues' constants, so that they fold
            *([NarrowMasks()] if _aarch64(tvm_target) else []), FoldRequantize(report, moves=_aarch64(tvm_target)),
            FoldScaleChains(report), FoldGeluQuantize(report, half=_half(tvm_target), neon=_aarch64(tvm_target)),
            FoldSoftmaxQuantize(report, top_byte=_aarch64(tvm_target), llvm=tvm_target.kind.name == "llvm",
                                half=_half(tvm_target)),
            FoldLayerNormQuantize(report)]
        if packed_dot_for(tvm_target) is SDOT:  # NEON's fmla overwrites its addend: the bias a copy a vector
            phases["requantize"].append(AccumulatorBias(report))
            phases["requantize"].append(NarrowGeluInputs(report))
            phases["requantize"].append(ZipPackOperands(report))  # K and V packed by zips, not byte gathers
    return phases


@tvm.transform.module_pass(opt_level=0, name="DropUnusedKernels")
def drop_unused_kernels(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """The module without PrimFuncs no Relax function calls: the kernels a rewrite added that FuseTIR then
    copied into fused ones (gelu_quantize_half's, the top-byte quantizes'). Relax's DeadCodeElimination keeps
    every function with a global symbol, and TVM would compile (and schedule) each as a kernel of its own."""
    used = {gv.name_hint for f in mod.functions.values() if isinstance(f, relax.Function)
            for gv in relax.analysis.all_global_vars(f)}
    keep = {gv: f for gv, f in mod.functions.items() if isinstance(f, relax.Function) or gv.name_hint in used}
    if len(keep) == len(mod.functions):
        return mod
    return tvm.IRModule(keep, attrs=mod.attrs, global_infos=mod.global_infos)


def _module_phases(tvm_target) -> dict[str, list]:
    t = relax.transform
    cpu = tvm_target.kind.name == "llvm"
    fast_math = [RationalErfs(), FloatSoftmaxes(), t.FastMathTransform()] if cpu else []
    quantizes = [LayerNormOutputs(), TopByteQuantizes()] if _aarch64(tvm_target) else []
    return {"legalize": [ReciprocalDivides, *fast_math, *quantizes, t.LegalizeOps(), t.AnnotateTIROpPattern(),
                         t.FoldConstant(), t.FuseOps(), t.FuseTIR(), drop_unused_kernels]}


def _sequential(phases: dict, order: tuple[str, ...], name: str) -> tvm.transform.Sequential:
    return tvm.transform.Sequential([tvm.transform.Sequential(phases[p], name=p) for p in order if p in phases],
                                    name=name)


def relax_module(parent: Artifact, tvm_target, integer: bool = True, dump_ir: Path | None = None):
    """(Relax module, RewriteReport | None): the artifact's ONNX imported at each length bucket, through
    the bucket phases (the integer ones for an int8 model with ``integer``), merged."""
    lengths = bucket_lengths(parent, tvm_target)
    mods, reports = {}, {}
    dump = _Dump(dump_ir, len(lengths) > 1)
    for n in lengths:
        dump.bucket = n
        mod = import_onnx(parent.file("model.onnx"), parent.results["inputs"], _static_dims(parent) | {"seq": n})
        dump.write("import", mod)
        reports[n] = RewriteReport() if parent.stage == "quantize" and integer else None
        mods[n] = _run(bucket_pipeline(tvm_target, reports[n]), mod, dump)
    report = reports[lengths[-1]]
    if report is not None and len({(r.total, tuple(r.skipped)) for r in reports.values()}) > 1:
        raise CompileError("the int8 rewrite differs between length buckets: "
                           + ", ".join(f"{n}: {r.total} integer kernels" for n, r in reports.items()))
    mod = merge(mods, lengths)
    dump.bucket = None
    if len(lengths) > 1:
        dump.write("merge", mod)
    return mod, report


def fuse(mod, tvm_target, dump_ir: Path | None = None):
    """The module phases: legalize, fold constants and fuse each kernel with its epilogue."""
    with tvm_target:
        return _run(module_pipeline(tvm_target), mod, _Dump(dump_ir, False))


def bucket_lengths(parent: Artifact, tvm_target) -> list[int]:
    """The lengths a library of this export (or its quantized model) is built for on ``tvm_target``:
    one for a static export, buckets up to its --seq-len for a --dynamic one, each a whole number of the
    target's vectors (:mod:`squeezeedge.lowering.lengths`; an int8 model on aarch64 also 14)."""
    from squeezeedge.lowering.schedules import vector_lanes

    dynamic = any(not isinstance(d, int) for i in parent.results["inputs"] for d in i["shape"])
    multiple = vector_lanes(tvm_target) if tvm_target.kind.name == "llvm" else FIRST_BUCKET
    if parent.stage == "quantize" and _aarch64(tvm_target):
        multiple = 2  # 14 tokens too: the packed attention pads 14 keys to 16 (int8.packed_pair)
    return buckets(_static_dims(parent)["seq"], dynamic, multiple)


def _run(pipeline: tvm.transform.Sequential, mod, dump: "_Dump"):
    if dump.out is None:
        return pipeline(mod)
    with tvm.transform.PassContext(instruments=[dump.instrument()]):
        return pipeline(mod)


class _Dump:
    """IR files: ``NN-<step>.py`` in order (each bucket of an any-length model one section of the step's
    file), numbered on from the files already in ``out`` (relax_module's, then fuse's)."""

    def __init__(self, out: Path | None, sections: bool):
        self.out, self.sections, self.bucket, self.order = out, sections, None, {}
        self.next = 0
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.next = len(list(out.glob("[0-9][0-9]-*.py")))  # after the steps already written

    def write(self, step: str, mod) -> None:
        if self.out is None:
            return
        if step not in self.order:
            self.order[step] = self.next
            self.next += 1
        path = self.out / f"{self.order[step]:02d}-{step}.py"
        head = f"# ---- length bucket {self.bucket} ----\n" if self.sections and self.bucket else ""
        with open(path, "a" if head and path.exists() else "w") as f:
            f.write(head + mod.script(show_meta=False) + "\n")

    def instrument(self):
        dump = self

        @tvm.instrument.pass_instrument
        class AfterEachStep:
            """Writes the module after each step of a phase (depth 3: pipeline, phase, step)."""

            def __init__(self):
                self.depth = 0

            def run_before_pass(self, _mod, _info):
                self.depth += 1

            def run_after_pass(self, mod, info):
                if self.depth == 3:
                    dump.write(info.name, mod)
                self.depth -= 1

        return AfterEachStep()
