"""`squeezeedge bench --emulate`: a board's work with no board, counted exactly on the board's own core.

Each aarch64 library runs in its deploy runner (one thread) under qemu-user emulating its target's core
(the target file's ``qemu_cpu``), with an instruction-counting plugin (compiler/deploy/runner/count_insns.c).
The runner makes a marker system call before and after each inference, so the count between two markers is
that inference's instructions, whatever loading the process did. Each distinct shape runs once uncounted
first (a first run at a shape allocates), then every input once, counted. The same is done, on the same core and the same inputs, for the runtimes
a board user would pick instead: onnxruntime's aarch64 wheel (fp32, and int8 on its own recipe) and LiteRT's
(the bench's TFLite models), run by Debian's arm64 CPython (compiler/deploy/board_python.py).

Workloads: random ids at 16/32/64/128 tokens (those up to the library's maximum) and real text, each
text at its own length (the library pads to its bucket; onnxruntime runs the exact length; LiteRT's
models take one length, so its texts are padded to it). The floor is the model's multiply-adds (PyTorch's
FLOP counter on the export's model) over the multiply-adds one instruction of the core's best kind does.

These are counts of emulated instructions, not times: the report keeps them apart from every latency.
They repeat exactly on any machine, which is what lets ``--fail-on instructions:P%`` gate CI tightly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from squeezeedge import console
from squeezeedge.errors import ArtifactError, InputError, ToolchainError

SCHEMA_NAME, SCHEMA_VERSION = "squeezeedge-instructions", 1
PEER_SCRIPT = Path(__file__).with_name("count_peer.py")
ORT_FP32, ORT_INT8 = "onnxruntime fp32", "onnxruntime int8 (its own recipe)"


@dataclass(frozen=True)
class EmulateConfig:
    baselines: tuple[str, ...] = ("ort", "tflite")
    texts: Path | None = None  # the real-text workload; None: the held-out texts of the shipped corpus
    workdir: Path = Path("build")
    seed: int = 1
    timeout: float = 3600.0
    jobs: int = os.cpu_count() or 1  # qemu processes at once (each counts one thread: the counts do not change)


# --- the floor ---------------------------------------------------------------------------------------

def best_instruction(target: dict, precision: str) -> tuple[str, float]:
    """(the core's best multiply-add instruction for ``precision``, multiply-adds per instruction)."""
    tvm = target.get("tvm_host") if target.get("device") == "cuda" else target.get("tvm")
    if precision == "fp32":
        return "fmla (4 x fp32)", 4.0
    if "+dotprod" in ((tvm or {}).get("mattr") or []):
        return "sdot (16 x int8)", 16.0
    return "smull/smlal2 + sadalp (16 x int8 in 3)", 16 / 3


def multiply_adds(export_dir: Path, lengths: list[int]) -> dict[int, int]:
    """Multiply-adds of one inference of the export's model at each length (PyTorch's FLOP counter / 2:
    every matmul, convolution and linear layer, grouped convolutions at their real size)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from squeezeedge.artifact import load_artifact
    from squeezeedge.measure.baselines import _quiet
    from squeezeedge.stages.export import ExportConfig
    from squeezeedge.stages.models import INPUT_NAMES, build_torch_model

    cfg = load_artifact(export_dir, verify=False).manifest["config"]
    with _quiet():
        model, config, *_ = build_torch_model(
            ExportConfig(**{k: v for k, v in cfg.items() if k in ExportConfig.__dataclass_fields__}).spec())
    out = {}
    for n in lengths:
        ids = torch.ones((cfg["batch"], n), dtype=torch.int64)
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(*(ids if name != "token_type_ids" else torch.zeros_like(ids) for name in INPUT_NAMES))
        out[n] = counter.get_total_flops() // 2
    return out


# --- counting ----------------------------------------------------------------------------------------

def parse_marks(log: Path, runs: int) -> list[int]:
    """Instructions of each marked run, from the counter's log ("mark TAG N" lines)."""
    marks: dict[int, int] = {}
    for tag, n in re.findall(r"^mark (\d+) (\d+)$", log.read_text() if log.is_file() else "", re.M):
        marks[int(tag)] = int(n)
    missing = [k for k in range(runs) if 2 * k not in marks or 2 * k + 1 not in marks]
    if missing:
        raise ArtifactError(f"the instruction counter saw {len(marks) // 2} of {runs} runs (log {log})")
    return [marks[2 * k + 1] - marks[2 * k] for k in range(runs)]


def warmups(feeds: list[dict], key) -> list[dict]:
    """The first feed of each distinct ``key(feed)``: run once, uncounted, before the counted runs."""
    seen: dict = {}
    for f in feeds:
        seen.setdefault(key(f), f)
    return list(seen.values())


def _counted(cmd: list[str], env: dict | None, log: Path, runs: int, what: str, timeout: float) -> list[int]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{what} did not finish in {timeout:.0f} s under qemu") from None
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        raise ArtifactError(f"{what} failed under qemu: {why[:200]}")
    return parse_marks(log, runs)


def aarch64_library(lib_dir: Path, meta: dict) -> Path:
    """The library file to count: model.so, or a CUDA build's board CPU library; InputError if not aarch64."""
    from squeezeedge.runtime import elf_machine

    lib = lib_dir / (meta.get("cpu_library") or meta["library"])["file"]
    if elf_machine(lib) != "aarch64":
        raise InputError(f"{lib_dir}: an {elf_machine(lib)} library; --emulate counts aarch64 libraries")
    return lib


def count_library(lib_dir: Path, cpu: str, feeds: list[dict], timeout: float = 3600.0) -> list[int]:
    """Instructions per inference of a built aarch64 library on ``cpu``, one count per feed (one thread)."""
    from squeezeedge.deploy.board_python import counter_args
    from squeezeedge.deploy.bundle import RUNTIME_LIBS, emulator_prefix, runner, runtime_dir
    from squeezeedge.runtime import LoadedModel, load_metadata

    meta, _ = load_metadata(Path(lib_dir))
    lib = aarch64_library(Path(lib_dir), meta)
    check = LoadedModel(None, meta["inputs"], meta["outputs"], vocab_size=meta.get("vocab_size"),
                        type_vocab_size=meta.get("type_vocab_size"), lengths=meta.get("lengths"))
    buckets = meta.get("lengths") or []
    warm = warmups(feeds, lambda f: next((b for b in buckets if b >= f["input_ids"].shape[1]), None))
    qemu, _, sysroot = emulator_prefix("aarch64")
    with tempfile.TemporaryDirectory(prefix="se-count-") as tmp:
        tmp = Path(tmp)
        for name in RUNTIME_LIBS:
            (tmp / name).symlink_to(runtime_dir("aarch64") / name)
        shutil.copy(runner("aarch64"), tmp / "run_model")
        specs: list[str] = []
        for i, feed in enumerate(warm + feeds):
            specs += ["--"] if i else []
            for spec, arr in zip(meta["inputs"], check._check(feed)):
                path = tmp / f"{i}.{spec['name']}.bin"
                arr.tofile(path)
                specs.append(f"{spec['name']}:{spec['dtype']}:{'x'.join(map(str, arr.shape))}:{path}")
        lengths = ["--lengths", ",".join(map(str, meta["lengths"]))] if meta.get("lengths") else []
        log = tmp / "count.log"
        cmd = [qemu, "-cpu", cpu, *counter_args(log), "-L", sysroot,
               str(tmp / "run_model"), "--threads", "1", *lengths, str(lib), str(tmp / "out.bin"), "1", *specs]
        env = os.environ | {"SE_COUNT_MARKS": "1", "TVM_NUM_THREADS": "1"}
        return _counted(cmd, env, log, len(warm) + len(feeds), f"{lib} in the deploy runner", timeout)[len(warm):]


def count_peer(runtime: str, model: Path, cpu: str, feeds: list[dict], timeout: float = 3600.0,
               litert_inputs: list[str] | None = None) -> list[int]:
    """Instructions per inference of onnxruntime or LiteRT's aarch64 wheel on ``cpu``, one count per feed."""
    import numpy as np

    from squeezeedge.deploy.board_python import python_command

    warm = warmups(feeds, lambda f: f["input_ids"].shape)
    feeds = warm + feeds
    with tempfile.TemporaryDirectory(prefix="se-peer-") as tmp:
        tmp = Path(tmp)
        names = list(feeds[0])
        np.savez(tmp / "inputs.npz", **{f"{i}.{n}": f[n] for i, f in enumerate(feeds) for n in names})
        job = {"runtime": runtime, "model": str(model), "inputs": str(tmp / "inputs.npz"), "count": len(feeds),
               "names": names, "litert_inputs": litert_inputs or []}
        (tmp / "job.json").write_text(json.dumps(job))
        cmd, env = python_command(cpu, counting=tmp / "count.log")
        counts = _counted([*cmd, str(PEER_SCRIPT), str(tmp / "job.json")], env, tmp / "count.log",
                          len(feeds), f"{runtime} ({Path(model).name})", timeout)
    return counts[len(warm):]


# --- the run -----------------------------------------------------------------------------------------

def _workloads(meta: dict, cfg: EmulateConfig, checkpoint: str | None) -> tuple[dict[int, dict], list[dict], dict]:
    """({length: random feed}, real-text feeds at their own lengths, the text workload's description)."""
    import numpy as np

    from squeezeedge.measure.workloads import LENGTH_POINTS, text_feeds, workload_texts
    from squeezeedge.runtime import random_inputs

    shape = meta["inputs"][0]["shape"]
    max_len = (meta.get("lengths") or [shape[1]])[-1]
    vocab, types = meta.get("vocab_size") or 30528, meta.get("type_vocab_size") or 2
    points = [n for n in LENGTH_POINTS if n <= max_len] if meta.get("lengths") else [shape[1]]
    by_length = {n: random_inputs(vocab, types, shape[0], n, cfg.seed) for n in points}
    if not meta.get("lengths") or shape[0] != 1:
        return by_length, [], {"skipped": "the library takes one shape: no real-text workload"}
    texts, source = workload_texts(cfg)
    feeds = text_feeds(texts, checkpoint, max_len, vocab)
    n = np.array([f["input_ids"].shape[1] for f in feeds])
    return by_length, feeds, {"source": source, "texts": len(feeds),
                              "tokens": {"min": int(n.min()), "median": float(np.median(n)), "mean": float(n.mean()),
                                         "max": int(n.max())}}


def _row(name: str, family: str, precision: str, lengths: dict, text: list[int] | None, how: str) -> dict:
    return {"name": name, "family": family, "precision": precision,
            "lengths": {str(k): v for k, v in lengths.items()},
            "text_mean": (sum(text) / len(text)) if text else None, "text_counts": text or None, "how": how}


def _peers(chain, lib_meta: dict, cpu: str, by_length: dict, texts: list[dict], cfg: EmulateConfig,
           cache: dict, pool) -> tuple[list, dict]:
    """Futures of the peer runtimes' rows on ``cpu``, counted in ``pool`` (cached per core and model:
    libraries on one core share them), and the peers skipped, with why."""
    from squeezeedge.measure.baselines import Skip, _ort_recipe_runner, _signature, tflite_models

    plan: list[tuple[str, str, str, Callable[[], tuple[Path, list[str] | None]]]] = []
    if "ort" in cfg.baselines and chain.export is not None:
        plan.append((ORT_FP32, "onnxruntime", "fp32", lambda: (chain.export.file("model.onnx"), None)))
        if lib_meta["precision"] == "int8" and chain.quantize is not None:
            plan.append((ORT_INT8, "onnxruntime", "int8",
                         lambda: (Path(_ort_recipe_runner(chain, 1, cfg.workdir).info["model"]), None)))
            if chain.quantize.results["scheme"]["activations"] != "uint8":  # also onnxruntime's default: u8
                plan.append((f"{ORT_INT8[:-1]}, u8 activations)", "onnxruntime", "int8", lambda: (Path(
                    _ort_recipe_runner(chain, 1, cfg.workdir, "uint8").info["model"]), None)))
    if "tflite" in cfg.baselines and chain.export is not None:
        for precision in ("fp32", "int8") if lib_meta["precision"] == "int8" else ("fp32",):
            def tfl(p=precision):
                models = tflite_models(chain.export, cfg.workdir / "tflite" / chain.export.sha256[:16])
                return models.file(f"model-{p}.tflite"), _signature(models.file(f"model-{p}.tflite"))[1]
            plan.append((f"tflite {precision}", "litert", precision, tfl))
    rows, skipped = [], {}
    for name, runtime, precision, model in plan:
        try:
            path, litert_inputs = model()
        except Skip as exc:
            skipped[name] = str(exc)
            continue
        key = (cpu, str(path))
        if key not in cache:
            console.info(f"  {name} on {cpu}: counting under qemu")
            cache[key] = pool.submit(_peer_row, name, runtime, precision, path, litert_inputs, cpu, by_length, texts,
                                     chain.export.manifest["config"]["seq_len"], cfg.timeout)
        rows.append(cache[key])
    return rows, skipped


def _peer_row(name, runtime, precision, path, litert_inputs, cpu, by_length, texts, static, timeout) -> dict:
    from squeezeedge.stages.models import INPUT_NAMES

    if runtime == "litert":  # one static length: the model's own; real texts are padded to it
        feed = by_length.get(static) or _pad(by_length[max(by_length)], static)
        (count,) = count_peer(runtime, path, cpu, [{n: feed[n] for n in INPUT_NAMES}], timeout, litert_inputs)
        return _row(f"{name} (LiteRT)", "tflite", precision, {static: count}, [count] * len(texts) if texts else None,
                    f"ai-edge-litert aarch64 wheel, XNNPACK, 1 thread; static {static} tokens (real texts padded to it)")
    points = list(by_length)
    counts = count_peer(runtime, path, cpu, [by_length[n] for n in points] + texts, timeout)
    return _row(name, "onnxruntime", precision, dict(zip(points, counts[:len(points)])), counts[len(points):],
                "onnxruntime aarch64 wheel, 1 thread, each input at its own length")


def _library_row(name, precision, lib_dir, cpu, by_length, texts, timeout) -> dict:
    points = list(by_length)
    counts = count_library(Path(lib_dir), cpu, [by_length[n] for n in points] + texts, timeout)
    return _row(name, "squeezeedge", precision, dict(zip(points, counts[:len(points)])), counts[len(points):],
                "deploy runner, 1 thread; real texts padded to the library's bucket")


def _pad(feed: dict, n: int) -> dict:
    import numpy as np

    return {k: np.pad(v, ((0, 0), (0, n - v.shape[1]))) for k, v in feed.items()}


def _board(lib_dir: Path, cfg: EmulateConfig, cache: dict, pool) -> dict:
    """One library's record, its rows as futures of counts running in ``pool``."""
    from squeezeedge.artifact import load_artifact
    from squeezeedge.measure.baselines import lineage
    from squeezeedge.runtime import load_metadata

    art = load_artifact(lib_dir, "build")
    meta, _ = load_metadata(lib_dir)
    aarch64_library(lib_dir, meta)
    target = meta["target"]
    cpu = target.get("qemu_cpu") or _target_core(target["name"])
    if not cpu:
        raise InputError(f"{lib_dir}: target {target['name']} names no qemu_cpu (the core to count on); "
                         "add qemu_cpu = \"cortex-...\" to its target file")
    chain = lineage(art)
    checkpoint = chain.export.manifest["config"].get("checkpoint") if chain.export else None
    by_length, texts, text_info = _workloads(meta, cfg, checkpoint)
    name = f"squeezeedge {meta['precision']} ({target['name']})"
    console.info(f"{name}: counting on {cpu} under qemu ({len(by_length)} lengths, {len(texts)} texts)")
    rows = [pool.submit(_library_row, name, meta["precision"], lib_dir, cpu, by_length, texts, cfg.timeout)]
    peers, skipped = _peers(chain, meta, cpu, by_length, texts, cfg, cache, pool)
    instruction, per = best_instruction(target, meta["precision"])
    macs = multiply_adds(chain.export.path, list(by_length)) if chain.export else {}
    text_macs = None
    if texts and chain.export:
        own = multiply_adds(chain.export.path, sorted({f["input_ids"].shape[1] for f in texts}))
        text_macs = sum(own[f["input_ids"].shape[1]] for f in texts) / len(texts)
    return {"library": name, "path": str(lib_dir), "sha256": art.sha256, "target": target["name"],
            "precision": meta["precision"], "core": cpu, "rows": rows + peers, "skipped": skipped, "text": text_info,
            "floor": {"instruction": instruction, "macs_per_instruction": per,
                      "macs": {str(k): v for k, v in macs.items()}, "text_macs": text_macs}}


def emulate(lib_dirs: list[Path], cfg: EmulateConfig, out: Path) -> dict:
    """Count every library and its peers on its target's core; write and return the results."""
    from squeezeedge.artifact import package_versions
    from squeezeedge.deploy.board_python import wheels
    from squeezeedge.measure.bench import _write_json, git_state, machine_info

    t0 = time.perf_counter()
    boards, cache = [], {}
    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs)) as pool:  # each count is one qemu process
        for lib_dir in lib_dirs:
            boards.append(_board(Path(lib_dir), cfg, cache, pool))
        for b in boards:  # the counts, as they finish
            b["rows"] = [f.result() for f in b["rows"]]
    report = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "emulated": True,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": git_state(),
              "machine": machine_info(),
              "versions": package_versions(("apache-tvm", "onnxruntime", "ai-edge-litert")) | {"board": wheels()},
              "method": {"what": "guest instructions per inference, counted by a qemu-user TCG plugin between "
                                 "marker system calls; 1 thread; each distinct shape run once uncounted first",
                         "qemu": _qemu_version(), "seed": cfg.seed, "seconds": round(time.perf_counter() - t0, 1)},
              "boards": boards}
    _write_json(out, report)
    return report


def _target_core(name: str) -> str:
    """The qemu core of a library built before metadata recorded it: its target file's (by name)."""
    from squeezeedge.errors import TargetError
    from squeezeedge.targets import load_target

    try:
        return load_target(name).qemu_cpu
    except TargetError:
        return ""


def _qemu_version() -> str:
    try:
        return subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def ensure_ready() -> None:
    """One line naming the set-up command when the board's Python or qemu is missing."""
    from squeezeedge.deploy.board_python import HOME, ready

    if not ready():
        raise ToolchainError(f"--emulate needs the board's Python and the counting plugin in {HOME}: "
                             "run 'squeezeedge setup-emulation' once (cacheable)")
