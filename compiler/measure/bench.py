"""`squeezeedge bench`: latency of built libraries and their baselines on one device, in one run.

Method (squeezeedge.measure.timing): every runtime gets the same input (seeded random tokens at the
library's shape) and the same thread count, in interleaved rounds of a shuffled order. Samples are
wall-clock milliseconds of one call, including the copy of inputs in and outputs out. The output
file follows ``bench_schema.json`` (validated before it is written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import load_artifact, package_versions, tool_versions
from squeezeedge.measure.baselines import BASELINE_RUNTIMES, BASELINES, Lineage, Runner, baseline_runners, lineage, squeezeedge_runner
from squeezeedge.errors import InputError, OutputError
from squeezeedge.options import check_config, option
from squeezeedge.measure.timing import MAX_P90_OVER_MEDIAN, MIN_RUNS, MIN_WINDOW_S, interleave, stats, verdict

SCHEMA_NAME, SCHEMA_VERSION = "squeezeedge-bench", 1
SCHEMA_FILE = Path(__file__).with_name("bench_schema.json")


@dataclass(frozen=True)
class BenchConfig:
    """bench's options, declared once (squeezeedge.options): the CLI's options and the pipeline file's [bench]
    keys come from these fields."""
    baselines: tuple[str, ...] | None = option(
        None, "Comma list of torch, ort, tflite; 'none' for the libraries alone [default: torch,ort,tflite; with "
        "--emulate ort,tflite: the runtimes a board runs].", choices=BASELINES, many="comma", none=True)
    warmup: int = option(3, "Untimed rounds first.", kind=int, low=0)
    repeat: int | None = option(None, "Timed rounds (instead of --min-seconds).", kind=int, low=1)
    min_seconds: float = option(2.0, "Rounds until every runtime has this much measured time (at least 10 rounds).",
                                kind=float, low=0, open_range=True)
    threads: int | None = option(None, "Threads for every runtime [default: the library's own default, as "
                                 "squeezeedge.runtime.load sets it: its target's threads, at most the CPUs this "
                                 "process may use].", kind=int, low=1)
    tracker: str | None = option(None, "Run the libraries on a board behind this TVM RPC tracker (HOST:PORT).",
                                 in_file=False)
    key: str | None = option(None, "The board's RPC key (with --tracker).", in_file=False)
    seed: int = option(1, "Seed of the random input.", kind=int)
    workdir: Path = Path("build")
    texts: Path | None = option(None, "Any-length libraries: the real-text workload's texts (.txt one per line, "
                                ".jsonl/.csv/.tsv with a 'text' field) [default: the held-out texts of "
                                "calibration/sentences.txt].", kind=Path)
    workloads: bool = option(True, "Any-length libraries: also the per-length sweep and the real-text workload "
                             "(--no-workloads: only the main measurement).", kind=bool,
                             flag="--workloads/--no-workloads")


# Interleaving runtimes that each keep a thread pool on a 2-core machine: a pool whose workers keep
# spinning after a call steals the cores the next runtime needs (interleaved with spinning pools,
# onnxruntime fp32 took over three times its time alone). So the baselines' pools are
# told to sleep between calls: onnxruntime (allow_spinning=0, set per session; with 1 its busy spin took
# every runtime here to 2x) and OpenMP under PyTorch. squeezeedge libraries run as squeezeedge.runtime.load
# sets them up for any user (its threads and TVM's spin count: compiler/runtime.py), nothing more.
QUIET_POOLS = {"OMP_WAIT_POLICY": "PASSIVE"}


def quiet_thread_pools() -> dict:
    """Set before any baseline starts its pool (process environment); returns what is in force."""
    for k, v in QUIET_POOLS.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in QUIET_POOLS}


def library_threads(lib_dir: Path) -> int | None:
    """The library's target threads from its metadata.json (0: all cores; None: it does not say)."""
    meta = Path(lib_dir) / "metadata.json"
    return json.loads(meta.read_text()).get("target", {}).get("threads") if meta.is_file() else None


def resolved(cfg: BenchConfig, lib_dirs: list[Path], emulate: bool = False) -> BenchConfig:
    """``cfg`` with its defaults that depend on the libraries filled in: the baselines (a board's own
    runtimes with ``emulate``), and the threads the first library runs with when loaded (its target's, at
    most the CPUs this process may use; on a board behind a tracker, its target's)."""
    from squeezeedge.runtime import default_threads

    threads = cfg.threads
    if threads is None:
        threads = (library_threads(lib_dirs[0]) or 1) if cfg.tracker else default_threads(library_threads(lib_dirs[0]))
    baselines = cfg.baselines if cfg.baselines is not None else ("ort", "tflite") if emulate else BASELINES
    return dataclasses.replace(cfg, baselines=baselines, threads=threads)


def validate_config(cfg: BenchConfig) -> None:
    check_config(cfg)
    if (cfg.tracker is None) != (cfg.key is None):
        raise InputError("--tracker and --key go together")


def machine_info() -> dict:
    import psutil
    import tvm

    from squeezeedge.runtime import isa_features

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    llvm_cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    isa = sorted(isa_features(tvm.target.Target({"kind": "llvm", "mcpu": llvm_cpu})))
    return {"cpu": cpu, "llvm_cpu": llvm_cpu, "arch": platform.machine(), "isa": isa,
            "cpuinfo_flags": [f for f in flags if f.startswith(("avx", "amx", "fma", "asimd", "sve", "vnni"))],
            "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "os": f"{platform.system()} {platform.release()}"}


def git_state() -> dict:
    root = Path(__file__).resolve().parents[2]  # the clone (installed: not a git checkout, and said so)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _agreement(out, ref) -> dict:
    import numpy as np

    a, b = np.asarray(out, dtype=np.float64).ravel(), np.asarray(ref, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return {"max_abs_diff": None, "cosine": None}
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if np.linalg.norm(a) * np.linalg.norm(b) else None
    return {"max_abs_diff": float(np.max(np.abs(a - b))), "cosine": cos}


def _name_apart(runners: list[Runner], lib_dirs: list[Path]) -> None:
    """Libraries of the same precision and target (an A/B of two builds) get their directory in the
    name, so each keeps its own samples and row."""
    names = [r.name for r in runners]
    for r, d in zip(runners, lib_dirs):
        if names.count(r.name) > 1:
            r.name = f"{r.name} [{Path(d).name}]"


def bench(lib_dirs: list[Path], cfg: BenchConfig, out: Path) -> dict:
    """Measure, write ``out`` (JSON, atomically) and return the report."""
    import numpy as np

    from squeezeedge.runtime import random_inputs

    validate_config(cfg)
    cfg = resolved(cfg, lib_dirs)
    pools = quiet_thread_pools()
    if out.suffix != ".json":
        raise InputError(f"--out must name a .json file, got {out}")
    builds = [load_artifact(d, stage="build") for d in lib_dirs]
    shapes = {json.dumps([i["shape"] for i in b.results["inputs"]]) for b in builds}
    if len(shapes) > 1:
        raise InputError("the libraries were built for different input shapes; bench them separately")
    chain = _merge([lineage(b) for b in builds])
    batch, seq = builds[0].results["inputs"][0]["shape"]
    meta = json.loads((builds[0].path / "metadata.json").read_text())
    feed = random_inputs(meta.get("vocab_size") or 30528, meta.get("type_vocab_size") or 2, batch, seq, cfg.seed)

    if cfg.tracker:
        from squeezeedge.measure.remote import remote_runners

        runners = remote_runners(lib_dirs, cfg.tracker, cfg.key, feed, cfg.threads)  # timed on the board by TVM
        skipped = {n: "baselines run in this process, not on the board behind the tracker; run "
                      "'squeezeedge bench' on the board itself to measure them there"
                   for b in cfg.baselines for n in BASELINE_RUNTIMES[b]}
    else:
        runners = [squeezeedge_runner(d, cfg.threads) for d in lib_dirs]
        base, skipped = baseline_runners(cfg.baselines, chain, cfg.threads, cfg.workdir, feed)
        runners += base
    _name_apart(runners[:len(lib_dirs)], lib_dirs)
    console.info(f"  timing {len(runners)} runtimes, interleaved: {', '.join(r.name for r in runners)}")
    samples, window_s = interleave(runners, feed, cfg)
    outputs = {r.name: np.asarray(r.fn(feed)) for r in runners}
    workloads = None
    if any(r.any_length for r in runners[:len(lib_dirs)]) and cfg.workloads:
        if cfg.tracker:
            console.info("  per-length and real-text workloads: local only (the baselines run in this process)")
        else:
            from squeezeedge.measure.workloads import any_length_workloads

            workloads = any_length_workloads(runners, cfg, chain, meta, seq)
    ref_name = next((n for n in ("pytorch fp32", "onnxruntime fp32") if n in outputs), None)
    rows = _rows(runners, samples, outputs, ref_name, window_s, skipped)
    report = _report(cfg, rows, samples, window_s, ref_name, pools, chain, meta, batch, seq)
    if report["device"]["label"] is None:
        m = report["machine"]
        report["device"]["label"] = f"{m['cpu']} ({m['llvm_cpu']}, {m['cores']} cores)"
    if workloads is not None:
        report["workloads"] = workloads
    report["verdict"] = "VALID" if all(r["verdict"] == "VALID" for r in rows if r["status"] == "ok") else "INVALID"
    validate_report(report)
    _write_json(out, report)
    return report


def _rows(runners, samples: dict, outputs: dict, ref_name: str | None, window_s: float, skipped: dict) -> list[dict]:
    """One report row a runtime: its statistics and verdict, or why it was skipped."""
    rows = []
    for r in runners:
        st = stats(samples[r.name])
        v, reasons = verdict(st, window_s)
        rows.append({"name": r.name, "family": r.family, "precision": r.precision, "status": "ok", "reason": None,
                     "stats": st, "verdict": v, "verdict_reasons": reasons,
                     "samples_ms": [round(x, 4) for x in samples[r.name]], "model_bytes": r.model_bytes,
                     "agreement": _agreement(outputs[r.name], outputs[ref_name]) if ref_name else None,
                     "info": r.info})
    for name, why in skipped.items():
        rows.append({"name": name, "family": name.split()[0], "precision": (name.split() + ["-"])[1], "status": "skipped",
                     "reason": why, "stats": None, "verdict": None, "verdict_reasons": [], "samples_ms": [],
                     "model_bytes": None, "agreement": None, "info": {}})
    return rows


def _report(cfg: BenchConfig, rows: list[dict], samples: dict, window_s: float, ref_name: str | None, pools: dict,
            chain, meta: dict, batch: int, seq: int) -> dict:
    """The bench report (bench_schema.json) around ``rows``: where, with what and how it was measured."""
    return {
        "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_state(), "versions": tool_versions() | package_versions(("ai-edge-litert", "litert-torch", "ai-edge-quantizer")),
        "device": {"mode": "rpc" if cfg.tracker else "local", "tracker": cfg.tracker, "key": cfg.key,
                   "label": cfg.key if cfg.tracker else None},
        "machine": None if cfg.tracker else machine_info(),
        "threads": cfg.threads,
        "model": {"batch": batch, "seq_len": seq, "model_type": meta["model"].get("model_type"),
                  "head": meta["model"].get("head"),
                  "export": chain.export.manifest["config"] if chain.export else None},
        "method": {"warmup": cfg.warmup, "repeat": cfg.repeat, "min_seconds": None if cfg.repeat else cfg.min_seconds,
                   "rounds": max((len(v) for v in samples.values()), default=0), "interleaved": True,
                   "clock": "device (TVM time_evaluator over RPC)" if cfg.tracker else "wall clock per call",
                   "input_seed": cfg.seed, "reference": ref_name, "window_s": round(window_s, 3),
                   "thread_pools": pools | {"onnxruntime": "session.intra_op.allow_spinning=0",
                                            "squeezeedge": "as squeezeedge.runtime.load sets it (each library's "
                                                           "info.thread_pool)"},
                   "rules": {"min_runs": MIN_RUNS, "min_window_s": MIN_WINDOW_S,
                             "max_p90_over_median": MAX_P90_OVER_MEDIAN}},
        "fidelity": chain.quantize.results.get("fidelity") if chain.quantize else None,
        "runtimes": rows,
    }


def _merge(chains: list[Lineage]) -> Lineage:
    export = next((c.export for c in chains if c.export), None)
    quantize = next((c.quantize for c in chains if c.quantize), None)
    return Lineage(export, quantize, next((c.missing for c in chains if c.missing), ""))


def validate_report(report: dict) -> None:
    """Raise InputError (one line) unless ``report`` follows bench_schema.json, this version."""
    import jsonschema

    if report.get("schema") != SCHEMA_NAME:
        raise InputError(f"not a squeezeedge bench result (schema '{report.get('schema')}')")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"bench result schema version {report.get('schema_version')} is not supported "
                         f"(this squeezeedge reads version {SCHEMA_VERSION})")
    try:
        jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise InputError(f"bench result does not follow the schema at {where}: {exc.message[:160]}") from None


def _write_json(out: Path, payload: dict) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror}") from None
