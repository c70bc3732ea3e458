"""Stage: ONNX (fp32 export or int8 QDQ) -> TVM Relax -> deployable shared library + metadata.json.

For int8 models the Relax module is rewritten to integer kernels first (squeezeedge.lowering.int8); a build whose
quantized layers still multiply in float fails. Host builds are run once on random inputs and checked
against onnxruntime on the same ONNX file before the library is written.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import Artifact, StageRun, load_artifact, run_stage, sha256_file, tool_versions
from squeezeedge.errors import ArtifactError, CompileError, InputError, ToolchainError, ValidationError
from squeezeedge.lowering.relax import first_line, static_inputs
from squeezeedge.options import check_config, option
from squeezeedge.targets import Target, load_target

LIB_FILE = "model.so"
CPU_LIB_FILE = "model-cpu.so"  # CUDA targets: the same model for the board's CPU alone
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "tokenizer.json"  # the model's tokenizer: squeezeedge.runtime answers text with it
CROSS_PACKAGES = {"aarch64-linux-gnu": "g++-aarch64-linux-gnu"}  # Debian package of each cross g++


@dataclass(frozen=True)
class BuildConfig:
    """build's options, declared once (squeezeedge.options): the CLI's options and the pipeline file's [build]
    keys come from these fields."""
    target: str = option("host", "A board in targets/.", cli=False, in_file=False)
    target_file: Path | None = option(None, "A user's board TOML file.", kind=Path, cli=False, in_file=False)
    database: Path | None = option(None, "A MetaSchedule tuning database made by 'squeezeedge tune' for this "
                                   "model and target.", kind=Path, in_file=False)
    integer: bool = option(True, "int8 models: rewrite to integer kernels; --simulated-int8 compiles the model as "
                           "TVM imports it (float QDQ arithmetic), for comparison only.", kind=bool,
                           flag="--integer/--simulated-int8")
    fp32_tolerance: float = option(1e-4, "fp32 libraries: fail past this max abs difference from onnxruntime.",
                                   kind=float, low=0)
    int8_min_cosine: float = option(0.99, "int8 libraries: fail below this cosine to onnxruntime's op-by-op int8 "
                                    "output (or within 0.01 of its own integer path's, where that is lower).",
                                    kind=float, low=0, high=1)
    validation_runs: int = option(3, "Random inputs the library is checked on (natively).", kind=int, low=1)
    emulate: bool = option(True, "Cross builds: run the library under qemu-user through the C++ deploy runner and "
                           "check it.", kind=bool, flag="--emulate/--no-emulate")
    emulated_runs: int = option(1, "Random inputs a cross build is checked on under qemu-user (~50x slower than "
                                "the board).", kind=int, low=1)


def build_library(model_dir: Path, cfg: BuildConfig, out: Path, force: bool = False,
                  dump_ir: Path | None = None) -> StageRun:
    """Compile an export (fp32) or quantize (int8) artifact for a target into ``out``.

    Args:
        model_dir: artifact written by ``export`` or ``quantize``.
        cfg: target, optional tuning database, validation limits.
        out: artifact directory to write: model.so, metadata.json, manifest.json.
        force: rebuild even if ``out`` already holds this build.
        dump_ir: write the IR after each lowering step into this directory, one file a step (the build
            then runs even if ``out`` already holds it).

    Returns:
        StageRun; ``results`` repeats metadata.json (precision, integer-layer coverage, validation).

    Raises:
        ArtifactError: ``model_dir`` is not an export or quantize artifact.
        TargetError / ToolchainError: unknown target, or its cross toolchain is not installed.
        CompileError: an ONNX operator TVM cannot import (named), or float compute left in an int8 build.
        ValidationError: the library disagrees with onnxruntime past the limits.
    """
    check_config(cfg)
    parent = load_artifact(model_dir)
    if parent.stage not in ("export", "quantize"):
        raise InputError(f"{model_dir} is a '{parent.stage}' artifact; build takes an export or quantize artifact")
    target = load_target(cfg.target, cfg.target_file)
    if target.device not in ("cpu", "cuda"):
        raise InputError(f"target {target.name}: device '{target.device}' is not supported (cpu, cuda)")
    if target.device == "cuda" and cfg.database is not None:
        raise InputError(f"target {target.name}: tuning databases apply to CPU targets only; "
                         "CUDA kernels use dlight's default schedules")
    tvm_target = target.tvm_target()  # TargetError if TVM rejects it
    if target.device == "cuda":
        from squeezeedge.deploy.cuda import check_arch

        check_arch(str(tvm_target.attrs["arch"]))  # ToolchainError naming what to install, before any work
    database = _check_database(cfg.database, parent, target, tvm_target) if cfg.database is not None else None
    compiler = _cross_compiler(target)
    if target.is_cross and cfg.emulate:
        from squeezeedge.deploy.bundle import emulator_prefix

        try:
            emulator_prefix(target.cross_triple.split("-")[0])
        except ToolchainError as exc:
            raise ToolchainError(f"{exc}; cross builds are checked under qemu-user (or pass --no-emulate)") from None
    key = {"target": target.to_dict() | {"resolved": str(tvm_target)}, "integer": cfg.integer,
           "database": database.sha256 if database else None,
           "fp32_tolerance": cfg.fp32_tolerance, "int8_min_cosine": cfg.int8_min_cosine,
           "validation_runs": cfg.validation_runs, "emulate": cfg.emulate and target.is_cross}

    def work(tmp: Path) -> dict:
        meta = _build(parent, target, tvm_target, compiler, cfg, tmp, database, dump_ir)
        meta["tokenizer"] = _save_tokenizer(parent, tmp)  # the metadata, written once, names it
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    if dump_ir is not None:
        dump_ir.mkdir(parents=True, exist_ok=True)
        for old in dump_ir.glob("[0-9][0-9]-*.py"):  # a previous dump's steps
            old.unlink()
    return run_stage("build", out, key, work, parent=parent, force=force or dump_ir is not None)


def _save_tokenizer(parent: Artifact, out: Path) -> dict | None:
    """The model's tokenizer as ``out/tokenizer.json``, no padding or truncation (the runtime sets those per
    call): the export's checkpoint's own, else bert-base-uncased's WordPiece, as quantize and bench use.
    None, with a note, when the export a quantized model came from is gone (the library still takes ids)."""
    from squeezeedge.stages.calibdata import load_tokenizer

    export = parent
    if parent.stage == "quantize":
        link = parent.manifest.get("parent") or {}
        try:
            export = load_artifact(Path(link["path"]), stage="export", verify=False)
        except (ArtifactError, KeyError):
            console.info(f"  no tokenizer in the library: the export {link.get('path')} is gone "
                         "(it still answers token ids)")
            return None
    tok, info = load_tokenizer(export.manifest["config"].get("checkpoint"), 1)
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(out / TOKENIZER_FILE))
    return {"file": TOKENIZER_FILE, "sha256": sha256_file(out / TOKENIZER_FILE), "from": info.source}


def _check_database(path: Path, parent: Artifact, target: Target, tvm_target) -> Artifact:
    """A finished tuning database made for exactly this model and target."""
    from squeezeedge.stages.tune import database_identity, identity_mismatch

    db = load_artifact(path, stage="tune")
    why = identity_mismatch(db.manifest["config"]["identity"],
                            database_identity(parent.sha256, parent.stage, target.name, tvm_target))
    if why:
        raise InputError(f"database {path}: {why}")
    return db


def _cross_compiler(target: Target):
    if not target.is_cross:
        return None
    gxx = f"{target.cross_triple}-g++"
    if shutil.which(gxx) is None:
        pkg = CROSS_PACKAGES.get(target.cross_triple, f"a {target.cross_triple} cross g++")
        raise ToolchainError(f"target {target.name} links with {gxx}, which is not installed "
                             f"(apt-get install {pkg})")
    from tvm.support import cc

    return cc.cross_compiler(gxx)


def _build(parent: Artifact, target: Target, tvm_target, compiler, cfg: BuildConfig, tmp: Path,
           database: Artifact | None, dump_ir: Path | None = None) -> dict:
    """Lower, compile, link and check one library into ``tmp``; returns its metadata."""
    precision = "int8" if parent.stage == "quantize" else "fp32"
    t0 = time.perf_counter()
    mod, coverage, lengths = _lower(parent, tvm_target, cfg, precision, dump_ir)
    ex, kernels = _compile(mod, target, tvm_target, database, coverage, len(lengths), dump_ir)
    compile_s = time.perf_counter() - t0
    lib = tmp / LIB_FILE
    with console.step("linking " + (f"with {target.cross_triple}-g++" if compiler else "the shared library")):
        if compiler is not None:
            ex.export_library(str(lib), fcompile=compiler)
        else:
            ex.export_library(str(lib))
    meta_lengths = lengths if len(lengths) > 1 else None
    checks = _check_library(lib, parent, target, tvm_target, precision, cfg, meta_lengths)
    meta = _metadata(parent, target, tvm_target, precision, coverage, database, kernels, lib, meta_lengths,
                     checks) | {"compile_s": round(compile_s, 2), "versions": tool_versions()}
    if target.device == "cuda":  # Jetson: also the CPU-only library for the board's Cortex cores, built and checked the same way
        meta["cpu_library"] = _cpu_library(parent, target, compiler, cfg, tmp)
    return meta


def _lower(parent: Artifact, tvm_target, cfg: BuildConfig, precision: str, dump_ir: Path | None):
    """The Relax module (squeezeedge.lowering.pipeline's bucket phases), its int8 coverage (None for fp32),
    and the lengths it is built for. An int8 model whose quantized layers did not all become integer
    kernels fails here."""
    from squeezeedge.lowering.int8 import AVX2, NEON16, float_compute_layers, packed_dot_for
    from squeezeedge.lowering.pipeline import bucket_lengths, relax_module

    lengths = bucket_lengths(parent, tvm_target)
    integer = precision == "int8" and cfg.integer
    packed = packed_dot_for(tvm_target)
    instruction = "vpmaddubsw (7-bit weights) or vpmaddwd" if packed is AVX2 else \
        "smlal (7-bit weights) or smlal2" if packed is NEON16 else packed and packed.instruction
    rewrite = (" and rewriting QDQ layers to integer kernels" + (f" (weights packed for {instruction})"
                                                                  if packed else "")) if integer else ""
    # TVM logs a warning per embedding gather ("Fast mode segfaults when there are out-of-bounds
    # indices"); the runtime checks every id before a call, so it goes to -v with TVM's other chatter
    shapes = f" at {len(lengths)} lengths ({', '.join(map(str, lengths))})" if len(lengths) > 1 else ""
    with console.step(f"importing {precision} ONNX into TVM Relax{shapes}{rewrite}"), console.native_stderr_to_debug():
        mod, report = relax_module(parent, tvm_target, integer=cfg.integer, dump_ir=dump_ir)
    if precision != "int8":
        return mod, None, lengths
    quantized = _quantized_layers(parent.file("model.onnx"))
    if not integer:
        return mod, {"quantized_layers": quantized, "integer_kernels": 0, "mode": "float QDQ simulation"}, lengths
    floats = float_compute_layers(mod)
    expected_float = parent.results.get("float_layers", 0)
    if len(floats) != expected_float or report.total != quantized:
        raise CompileError(f"int8 lowering incomplete: {report.total} of {quantized} quantized layers "
                           f"became integer kernels, {len(floats)} still multiply in float "
                           f"(expected {expected_float} kept float); skipped: {report.skipped}")
    return mod, {"quantized_layers": quantized, "integer_kernels": report.total, "conv1d": report.conv1d,
                 "packed_kernels": report.packed, "packed_instruction": "+".join(sorted(report.instructions)) or None,
                 "matmul_weight": report.matmul_weight, "matmul_activation": report.matmul_activation,
                 "float_layers_kept": len(floats), "lookup_tables": report.lookup_tables,
                 "round_trips_dropped": report.round_trips_dropped, "epilogues_folded": report.epilogues_folded,
                 "scale_chains_folded": report.scale_chains_folded, "gelus_folded": report.gelus_folded,
                 "softmax_folded": report.softmax_folded, "layer_norms_folded": report.layer_norms_folded}, lengths


def _compile(mod, target: Target, tvm_target, database: Artifact | None, coverage: dict | None, buckets: int,
             dump_ir: Path | None):
    """Legalize and fuse, schedule (the database's kernels, then defaults; dlight on GPUs), compile.
    Returns (executable, kernel counts for the metadata); adds the compiled kernels' counts to an integer
    build's ``coverage`` and fails one whose compiled kernels still multiply in float."""
    import tvm

    from squeezeedge.lowering import intrinsics  # noqa: F401  (the dot-product intrinsics)
    from squeezeedge.lowering.int8 import mac_kernels, tensorized_kernels
    from squeezeedge.lowering.pipeline import fuse

    gpu = target.device == "cuda"
    if gpu:
        from squeezeedge.deploy.cuda import enable_nvcc_codegen, gpu_schedule

        enable_nvcc_codegen()
    kernels = {"scheduled": 0, "db_failed": 0, "db_default": 0, "defaults": None}
    with console.step(f"compiling for {target.name} ({tvm_target.kind.name}, "
                      f"{tvm_target.attrs.get('mcpu') or tvm_target.attrs.get('arch') or 'generic'})"
                      + (", kernels through nvcc" if gpu else "")), console.native_stderr_to_debug():
        try:
            mod = fuse(mod, tvm_target, dump_ir=dump_ir)
            macs = mac_kernels(mod)  # before scheduling: tensorized kernels no longer show their multiply
            if gpu:
                mod = gpu_schedule(mod, tvm_target)
            if database is not None:
                from squeezeedge.stages.tune import apply_database

                mod, _, kernels["db_failed"], kernels["db_default"] = apply_database(mod, tvm_target, database.path)
            kernels["scheduled"] = sum(1 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
                                       and f.attrs and f.attrs.get("tirx.is_scheduled"))
            if not gpu:
                from squeezeedge.lowering.schedules import default_schedules

                mod, kernels["defaults"] = default_schedules(mod, tvm_target)
            tensorized = tensorized_kernels(mod)
            if coverage is not None and "float_layers_kept" in coverage \
                    and len(macs["float"]) > coverage["float_layers_kept"] * buckets:
                raise CompileError(f"int8 lowering incomplete: {len(macs['float'])} compiled kernels still "
                                   f"multiply in float ({sorted(set(macs['float']))[0]}, ...)")
            from squeezeedge.lowering.pipeline import tir_lowering

            with (tvm_target if gpu else contextlib.nullcontext()), tir_lowering(tvm_target):  # nvcc's callback reads the arch from the current target
                ex = tvm.compile(mod, target=tvm_target)
        except CompileError:
            raise
        except Exception as exc:
            raise CompileError(f"TVM failed to compile the model for {target.name}: {first_line(exc)}") from exc
    if coverage is not None:
        coverage |= {"compiled_integer_mac_kernels": len(macs["integer"]),
                     "compiled_float_mac_kernels": len(macs["float"]), "tensorized_kernels": len(tensorized)}
    return ex, kernels


def _check_library(lib: Path, parent: Artifact, target: Target, tvm_target, precision: str, cfg: BuildConfig,
                   lengths: list[int] | None) -> dict:
    """The library's CPU features, its CUDA binaries, and its check against onnxruntime: natively on a host
    whose CPU has the features, under qemu-user for a cross build (a CUDA library through its CPU one)."""
    from squeezeedge.runtime import isa_features, missing_cpu_features

    gpu = target.device == "cuda"
    cpu_target = tvm_target.host if target.device != "cpu" else tvm_target
    out = {"cpu_features": sorted(isa_features(cpu_target)) if cpu_target.kind.name == "llvm" else [],
           "validation": None, "cuda": None}
    if gpu:
        from squeezeedge.deploy.cuda import describe

        out["cuda"] = info = describe(lib, str(tvm_target.attrs["arch"]))
        if not any(b["arch"] == info["arch"] for b in info["device_binaries"]):
            raise CompileError(f"the library carries no {info['arch']} kernels (found "
                               f"{[b['arch'] for b in info['device_binaries']] or 'none'})")
    missing = [] if target.is_cross else missing_cpu_features(out["cpu_features"])
    if missing:
        console.info(f"  not running the library here: this CPU lacks {', '.join(missing)}")
    if not target.is_cross and not missing and not gpu:
        with console.step(f"checking the library against onnxruntime on {cfg.validation_runs} random inputs"):
            out["validation"] = _validate(lib, parent.file("model.onnx"), parent, precision, cfg, lengths=lengths)
    elif target.is_cross and cfg.emulate and not gpu:
        with console.step(f"running the library under qemu-user (C++ deploy runner) on {cfg.emulated_runs} "
                          "random input(s), against onnxruntime"):
            out["validation"] = _validate(lib, parent.file("model.onnx"), parent, precision, cfg, emulated=True,
                                          lengths=lengths)
    return out


def _metadata(parent: Artifact, target: Target, tvm_target, precision: str, coverage: dict | None,
              database: Artifact | None, kernels: dict, lib: Path, lengths: list[int] | None, checks: dict) -> dict:
    """metadata.json: what the library is, was built from and with, and how it was checked."""
    from squeezeedge.runtime import SPIN_COUNT

    return {
        "schema_version": 1,
        "model": {"stage": parent.stage, "sha256": parent.sha256, "model_type": parent.results["model_config"]
                  ["model_type"], "head": parent.results["head"]},
        "precision": precision,
        "int8": coverage,
        "target": {"name": target.name, "device": target.device, "cross_triple": target.cross_triple,
                   "threads": target.threads, "tvm": json.loads(str(tvm_target)), "cpu_features": checks["cpu_features"],
                   "qemu_cpu": target.qemu_cpu},
        "database": {"path": str(database.path), "sha256": database.sha256} if database else None,
        "tuning": ({k: database.results[k] for k in ("tuned_tasks", "tasks", "trials", "tuning_wall_s_total")}
                   if database else {"tuned_tasks": 0, "tasks": None, "note": "untuned default schedules"})
                  | {"kernels_with_tuned_schedule": kernels["scheduled"],
                     "kernels_where_schedule_failed": kernels["db_failed"],
                     "kernels_kept_default_schedule": kernels["db_default"],
                     "kernels_with_default_schedule": kernels["defaults"]},
        "inputs": static_inputs(parent),  # at the longest length
        "outputs": static_inputs(parent, "outputs"),
        # every length from 1 to the last runs, padded to the smallest of these that holds it
        "lengths": lengths,
        "vocab_size": parent.results["model_config"]["vocab_size"],
        "type_vocab_size": parent.results["model_config"].get("type_vocab_size", 2),
        "library": {"file": LIB_FILE, "sha256": sha256_file(lib), "bytes": lib.stat().st_size},
        # what squeezeedge.runtime.load, the deploy runner and run.sh set TVM's pool to unless told otherwise
        "thread_pool": {"threads": target.threads or "all", "capped_at": "the CPUs the process may use",
                        "spin_count": SPIN_COUNT, "override": "TVM_NUM_THREADS, TVM_THREAD_POOL_SPIN_COUNT"},
        "validation": checks["validation"],
        "cuda": checks["cuda"],
    }


def _cpu_library(parent: Artifact, target: Target, compiler, cfg: BuildConfig, tmp: Path) -> dict:
    import dataclasses

    cpu = dataclasses.replace(target, name=f"{target.name}-cpu", device="cpu", tvm=target.tvm_host, tvm_host=None)
    sub = tmp / ".cpu"
    sub.mkdir()
    console.info(f"  and the CPU library for {cpu.name}:")
    meta = _build(parent, cpu, cpu.tvm_target(), compiler, cfg, sub, None)
    (sub / LIB_FILE).rename(tmp / CPU_LIB_FILE)
    shutil.rmtree(sub)
    return {"file": CPU_LIB_FILE, "sha256": sha256_file(tmp / CPU_LIB_FILE), "bytes": (tmp / CPU_LIB_FILE).stat().st_size,
            "target": meta["target"], "int8": meta["int8"], "validation": meta["validation"]}


def _quantized_layers(onnx_path: Path) -> int:
    """Compute nodes of the QDQ model whose weight (second) input comes through DequantizeLinear."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    return sum(1 for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
               and producer.get(n.input[1]) == "DequantizeLinear" and producer.get(n.input[0]) == "DequantizeLinear")


def _validate(lib: Path, onnx_path: Path, parent: Artifact, precision: str, cfg: BuildConfig,
              emulated: bool = False, lengths: list[int] | None = None) -> dict:
    import numpy as np
    import onnxruntime as ort

    from squeezeedge.runtime import random_inputs
    from squeezeedge.runtime import LoadedModel

    if emulated:
        from squeezeedge.deploy.bundle import run_file

        record = {"inputs": static_inputs(parent), "outputs": static_inputs(parent, "outputs"), "lengths": lengths}
        model = lambda **feed: [run_file(lib, record, feed)]  # noqa: E731
    else:
        model = LoadedModel.from_files(lib, static_inputs(parent), parent.results["outputs"], lengths=lengths)
    from squeezeedge.stages.quantize import reference_session

    sess = (reference_session(onnx_path) if precision == "int8"
            else ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]))
    # onnxruntime's own integer path (QDQ fused into integer kernels) rounds differently from its op-by-op
    # one; how far the two drift apart bounds what a correct int8 library can be held to
    fused = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]) if precision == "int8" else None
    conf = parent.results["model_config"]
    batch, seq = static_inputs(parent)[0]["shape"]
    runs = cfg.emulated_runs if emulated else cfg.validation_runs
    # an any-length library: also 1 token, the first bucket, one past it (padded to the next), against
    # onnxruntime running the dynamic export at exactly that length
    checked = sorted({1, lengths[0], lengths[0] + 1} - {seq}) if lengths else []
    diffs, cosines, ort_cosines = [], [], []
    for i, n in enumerate(checked + [seq] * runs):
        feed = random_inputs(conf["vocab_size"], conf.get("type_vocab_size", 2), batch, n, 2000 + i)
        got = model(**feed)[0].astype(np.float64).ravel()
        ref = sess.run(None, feed)[0].astype(np.float64).ravel()
        diffs.append(float(np.max(np.abs(got - ref))))
        cosines.append(cosine(got, ref))
        if fused is not None:
            ort_cosines.append(cosine(fused.run(None, feed)[0].astype(np.float64).ravel(), ref))
    result = {"reference": "onnxruntime on the same ONNX file" + (", QDQ op by op" if precision == "int8" else ""),
              "lengths": checked + [seq],
              "ran": "under qemu-user through the C++ deploy runner" if emulated else "natively, Python runtime", "runs": len(diffs), "max_abs_diff": max(diffs),
              "min_cosine": min(cosines)}
    if precision == "fp32" and not max(diffs) <= cfg.fp32_tolerance:
        raise ValidationError(f"fp32 library disagrees with onnxruntime: max abs diff {max(diffs):.3g} > "
                              f"{cfg.fp32_tolerance:g}")
    if precision == "int8":
        result["onnxruntime_integer_min_cosine"] = min(ort_cosines)
        result["required_min_cosine"] = bound = int8_cosine_bound(cfg.int8_min_cosine, min(ort_cosines))
        if not min(cosines) >= bound:
            raise ValidationError(f"int8 library disagrees with onnxruntime int8: cosine {min(cosines):.4f} < {bound:.4f} "
                                  f"(onnxruntime's integer path agrees with its op-by-op one to {min(ort_cosines):.4f})")
    return result


ORT_SELF_MARGIN = 0.01


def int8_cosine_bound(required: float, ort_self: float) -> float:
    """The cosine an int8 library must reach against onnxruntime's op-by-op QDQ output: ``required``;
    where onnxruntime's own integer path agrees with its op-by-op one less than that, its agreement minus a
    margin. Rounding differences are amplified by trained models with activation outliers: on random
    ids, all-MiniLM-L6-v2 int8 (percentile, 8-bit weights) gives 0.93 between onnxruntime's two paths,
    and the library 0.96 (results/PERFORMANCE-LOG.md); a wrong kernel lands far below either."""
    return required if ort_self >= required else ort_self - ORT_SELF_MARGIN


def cosine(a, b) -> float:
    """Cosine similarity of two flat vectors; two all-zero vectors are identical (1.0). A quantized
    model's logits on random token ids can all round to the output's zero point (seen with 7-bit
    weights on seeded-random SqueezeBERT: onnxruntime's reference gave [0, 0], and so did the library)."""
    import numpy as np

    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / max(na * nb, 1e-30))
