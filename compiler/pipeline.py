"""``squeezeedge pipeline FILE.toml --out DIR``: one model to many boards in one command.

export once -> quantize once per distinct int8 preset among the targets -> tune (only with a tracker) ->
build with a deploy bundle per target and precision -> bench: every library that runs natively here in
one interleaved run; aarch64 libraries counted (instructions per inference on their target's core under
qemu-user, beside onnxruntime and LiteRT on the same core: bench --emulate, never a timing) -> one report
over this run and the earlier ones kept in DIR/history.

Each stage is the CLI's own command in a child process: its caching (a stage whose inputs did not
change is skipped), its one-line errors and exit codes. A target whose stage fails is named and the
others go on; the bench is cached here (same libraries, same settings: the last results are reused).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import write_text_atomic
from squeezeedge.errors import InputError, PipelineError, RegressionError
from squeezeedge.measure.bench import BenchConfig
from squeezeedge.stages.build import BuildConfig
from squeezeedge.stages.export import ExportConfig
from squeezeedge.stages.quantize import QuantizeConfig
from squeezeedge.stages.tune import TuneConfig

TOP = {"targets": list, "precisions": list}
PRECISIONS = ("int8", "fp32")


@dataclass
class Config:
    path: Path
    targets: list[str]
    precisions: list[str]
    model: dict = field(default_factory=dict)
    quantize: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)
    tuning: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)


def load_config(path: Path) -> Config:
    """Read and check a pipeline file: unknown sections or keys and wrong types are one-line errors."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"pipeline file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read pipeline file {path}: {exc}") from None
    for key, value in data.items():
        if key in SECTIONS:
            data[key] = _section(path, key, value)
            continue
        if key in TOP:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise InputError(f"{path}: '{key}' must be a non-empty list of names")
            continue
        raise InputError(f"{path}: unknown key '{key}' (known: {', '.join([*TOP, *SECTIONS])})")
    if "targets" not in data:
        raise InputError(f"{path}: no 'targets' (a list of board names, e.g. targets = [\"host\", \"rpi5\"])")
    precisions = data.get("precisions", ["int8"])
    if bad := [p for p in precisions if p not in PRECISIONS]:
        raise InputError(f"{path}: unknown precision {bad[0]!r} (known: {', '.join(PRECISIONS)})")
    model = data.get("model", {})
    if "preset" in model and "checkpoint" in model:
        raise InputError(f"{path}: [model] takes preset or checkpoint, not both")
    return Config(Path(path), list(dict.fromkeys(data["targets"])), list(dict.fromkeys(precisions)), model,
                  data.get("quantize", {}), data.get("build", {}), data.get("tuning", {}), data.get("bench", {}))


def _section(path: Path, name: str, value) -> dict:
    """A stage's section ([model]: export, [quantize], [build], [tuning]: tune, [bench]): any of that stage's
    options (its config dataclass's declared fields), each checked as the command line checks it, plus the
    pipeline's own keys (PIPELINE_KEYS); a relative path is read from the pipeline file's directory, and
    [quantize] calibration_data = "shipped" is the default corpus."""
    from squeezeedge.options import read_section

    if name == "quantize" and isinstance(value, dict) and value.get("calibration_data") == "shipped":
        value = {k: v for k, v in value.items() if k != "calibration_data"}
    own = {}  # the pipeline's own keys beside a stage's options
    if isinstance(value, dict):
        for key, want in PIPELINE_KEYS.get(name, {}).items():
            if key in value:
                own[key] = value[key]
                if not isinstance(own[key], want):
                    raise InputError(f"{path}: [{name}] {key} must be {want.__name__}, not {own[key]!r}")
        value = {k: v for k, v in value.items() if k not in own}
    return own | read_section(SECTIONS[name], value, path, name)


# the sections declared by a stage's config: every option of that stage (its CLI's long name, underscores)
SECTIONS = {"model": ExportConfig, "quantize": QuantizeConfig, "build": BuildConfig, "tuning": TuneConfig,
            "bench": BenchConfig}
# and the pipeline's own keys in them: which database ("none", "shipped", a directory), whether to bench
PIPELINE_KEYS = {"tuning": {"database": str}, "bench": {"enabled": bool}}


@dataclass
class Step:
    stage: str
    target: str | None = None
    precision: str | None = None
    status: str = "pending"  # done | skipped | failed | not run
    seconds: float = 0.0
    path: str | None = None
    detail: str = ""

    def label(self) -> str:
        return " ".join(x for x in (self.stage, self.target, self.precision) if x)


def _cli(args: list) -> tuple[int, dict | None, str]:
    """Run one squeezeedge command in a child process: (exit code, its --json payload, its last error line)."""
    cmd = [sys.executable, "-m", "squeezeedge", "-q", "--json", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    payload = None
    if res.stdout.strip():
        try:
            payload = json.loads(res.stdout)
        except json.JSONDecodeError:
            payload = None
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if ln.startswith("squeezeedge:")), lines[-1] if lines else "")
    return res.returncode, payload, error


def _run_step(step: Step, args: list) -> dict | None:
    console.info(f"  {step.label()} ...")
    t0 = time.perf_counter()
    rc, payload, error = _cli(args)
    step.seconds = round(time.perf_counter() - t0, 1)
    if rc != 0:
        step.status, step.detail = "failed", f"exit {rc}: {error}"
        console.info(f"  {step.label()}: FAILED ({step.detail})")
        return None
    step.status = "skipped" if payload and payload.get("skipped") else "done"
    step.path = payload.get("path") if payload else None
    console.info(f"  {step.label()}: {'skipped (unchanged)' if step.status == 'skipped' else 'done'} "
                 f"in {step.seconds:.1f} s")
    return payload


def _resolve(cfg: Config, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (cfg.path.parent / p).resolve()


def _export_args(cfg: Config, out: Path) -> list:
    from squeezeedge.options import to_args

    model = {"dynamic": True} | cfg.model  # a pipeline builds any-length libraries unless told otherwise
    return ["export", "--out", out, *to_args(ExportConfig, model)]


def _quantize_args(cfg: Config, export: Path, target: str, out: Path) -> list:
    from squeezeedge.options import to_args

    return ["quantize", export, "--target", target, "--out", out, *to_args(QuantizeConfig, cfg.quantize)]


def _database(cfg: Config, target, precision: str, model: Path) -> tuple[Path | None, str]:
    """(a database that fits this model and ``target``, or None, and why)."""
    from squeezeedge.resources import data_dir
    from squeezeedge.stages.tune import database_identity, identity_mismatch

    where = cfg.tuning.get("database", "none")
    if where == "none":
        return None, "untuned (database = none)"
    root = data_dir("databases") if where == "shipped" else _resolve(cfg, where)
    db = root / f"{target.name}-{precision}"
    if not (db / "manifest.json").is_file():
        return None, f"untuned (no {db.name} in {where})"
    have = json.loads((db / "manifest.json").read_text()).get("config", {}).get("identity", {})
    parent = json.loads((model / "manifest.json").read_text())
    why = identity_mismatch(have, database_identity(parent.get("artifact_sha256"), parent.get("stage"), target.name,
                                                     target.tvm_target()))
    return (None, f"untuned ({db}: {why})") if why else (db, f"database {db}")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _library_sha(lib: Path) -> str:
    return json.loads((lib / "manifest.json").read_text()).get("artifact_sha256", "")


def _cached(out: Path, name: str, key: str) -> bool:
    stamp = out / f".{name}.key"
    return (out / name).is_file() and stamp.is_file() and stamp.read_text().strip() == key


def _keep_history(out: Path, name: str) -> None:
    """Move the previous results file into out/history/ (the report compares runs across them)."""
    old = out / name
    if old.is_file():
        (out / "history").mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(old.stat().st_mtime))
        old.rename(out / "history" / f"{old.stem}-{stamp}{old.suffix}")


def _where(results: dict) -> str:
    """Where a built library is timed: "native" (this machine), "emulated" (qemu-user), else why not here."""
    if results.get("cuda"):  # its CPU library was checked at build time; the GPU library runs on the board
        return f"CUDA library, no GPU here; its CPU library {results['cpu_library']['file']} is checked and bundled"
    ran = (results.get("validation") or {}).get("ran", "")
    return "native" if ran.startswith("natively") else "emulated" if "qemu" in ran else ran or "not validated here"


def _bench_once(out: Path, name: str, stage: str, libs: list, steps: list, failed: dict, settings: list,
                options: list) -> str | None:
    """``bench`` (timed, or --emulate: counted) over ``libs`` into out/NAME, skipped when the same libraries
    and settings made the file there; the previous file goes to out/history. Returns its path, or None."""
    step = Step(stage, ", ".join(f"{t}-{p}" for t, p, _, _ in libs))
    steps.append(step)
    key = _key([(str(p), _library_sha(p)) for _, _, p, _ in libs], *settings)
    if _cached(out, name, key):
        step.status, step.path = "skipped", str(out / name)
        console.info(f"  {step.label()}: skipped (same libraries and settings: {out / name})")
        return step.path
    _keep_history(out, name)
    (out / f".{name}.key").unlink(missing_ok=True)
    if _run_step(step, ["--workdir", out / "bench-work", "bench", *[p for _, _, p, _ in libs], *options,
                        "--out", out / name]):
        (out / f".{name}.key").write_text(key)
        step.path = str(out / name)
    else:
        failed.setdefault(stage, step.detail)
    return step.path


def run(cfg: Config, out: Path, jobs: int = 1, fail_on: str | None = None) -> dict:
    """Run the whole pipeline into ``out``; returns the summary (also written to out/pipeline.json/.md;
    :func:`check` turns a failed part or a regression into the exit code). Only a bad target name or a
    failed export stop it early (a bad target before ``out`` is made)."""
    from squeezeedge.targets import load_target

    targets = {name: load_target(name) for name in cfg.targets}  # an unknown board stops here, before any work
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps: list[Step] = []
    failed: dict[str, str] = {}

    export = Step("export")
    steps.append(export)
    console.info(f"pipeline {cfg.path.name}: {len(targets)} target(s) x {', '.join(cfg.precisions)} into {out}")
    if _run_step(export, _export_args(cfg, out / "export")) is None:
        raise PipelineError(f"export failed, nothing else can run: {export.detail}")
    models = _quantize_all(cfg, out, targets, steps, failed)
    databases = _databases(cfg, out, targets, models, steps)
    libs = _build_all(cfg, out, models, databases, steps, failed, jobs)
    summary_bench = _bench_all(cfg, out, libs, steps, failed)
    regression = _report(out, summary_bench, steps, failed, fail_on)
    summary = {"config": str(cfg.path), "out": str(out), "ok": not failed and regression is None,
               "failed": failed, "regression": regression, "seconds": round(time.perf_counter() - t0, 1),
               "steps": [vars(s) for s in steps], "bench": summary_bench,
               "bundles": sorted(str(p) for p in out.glob("*.tar.gz"))}
    write_text_atomic(out / "pipeline.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "pipeline.md", markdown(summary))
    return summary


def _quantize_all(cfg: Config, out: Path, targets: dict, steps: list, failed: dict) -> dict[tuple[str, str], Path]:
    """(target, precision) -> the model to build: int8 quantized once per distinct preset (targets sharing
    activations/weights/bits/zero points share the model), fp32 the export."""
    models: dict[tuple[str, str], Path] = {}
    if "int8" in cfg.precisions:
        groups: dict = {}
        for name, t in targets.items():  # what quantize reads from a preset (its reason is prose)
            p = t.int8
            key = (p.activations, p.weights, p.per_channel, p.weight_bits, p.symmetric_activations)
            groups.setdefault(key, []).append(name)
        for names in groups.values():
            step = Step("quantize", names[0], "int8",
                        detail=f"preset shared by {', '.join(names)}" if len(names) > 1 else "")
            steps.append(step)
            q_out = out / f"int8-{names[0]}"
            if _run_step(step, _quantize_args(cfg, out / "export", names[0], q_out)) is None:
                failed.update({n: f"quantize: {step.detail}" for n in names})
                continue
            models.update({(n, "int8"): q_out for n in names})
    if "fp32" in cfg.precisions:
        models.update({(n, "fp32"): out / "export" for n in targets})
    return models


def _databases(cfg: Config, out: Path, targets: dict, models: dict, steps: list) -> dict:
    """(target, precision) -> (database or None, why): tuned here with a tracker (boards measure), else a
    database directory's that fits, else untuned."""
    from squeezeedge.options import to_args

    databases: dict[tuple[str, str], tuple[Path | None, str]] = {}
    for (name, precision), model in models.items():
        if cfg.tuning.get("tracker") and targets[name].device == "cpu":
            step = Step("tune", name, precision)
            steps.append(step)
            db = out / "tune" / f"{name}-{precision}"
            options = {k: v for k, v in cfg.tuning.items() if k not in PIPELINE_KEYS["tuning"]}
            args = ["tune", model, "--target", name, "--out", db, *to_args(TuneConfig, options)]
            databases[(name, precision)] = (db, f"database {db}") if _run_step(step, args) is not None \
                else (None, f"untuned (tune failed: {step.detail})")
        else:
            databases[(name, precision)] = _database(cfg, targets[name], precision, model) \
                if targets[name].device == "cpu" else (None, "untuned (GPU target)")
    return databases


def _build_all(cfg: Config, out: Path, models: dict, databases: dict, steps: list, failed: dict, jobs: int) -> list:
    """Build (with a bundle) every model for its target, ``jobs`` at a time; returns the libraries built as
    (target, precision, path, where it can be measured)."""
    from squeezeedge.options import to_args

    builds: list[tuple[Step, list]] = []
    for (name, precision), model in models.items():
        db, why = databases[(name, precision)]
        step = Step("build", name, precision, detail=why)
        args = ["build", model, "--target", name, "--bundle", "--out", out / f"{name}-{precision}",
                *to_args(BuildConfig, cfg.build)]
        builds.append((step, args + (["--database", db] if db else [])))
        steps.append(step)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        payloads = list(pool.map(lambda b: _run_step(*b), builds))
    libs = []
    for (step, _), payload in zip(builds, payloads):
        if payload is None:
            failed.setdefault(step.target, f"build {step.precision}: {step.detail}")
            continue
        libs.append((step.target, step.precision, Path(step.path), _where(payload["manifest"]["results"])))
    return libs


def _bench_all(cfg: Config, out: Path, libs: list, steps: list, failed: dict) -> dict:
    """Time the native libraries in one interleaved run, count the emulated ones (each cached)."""
    from squeezeedge.options import to_args

    summary_bench: dict = {"native": None, "emulated": None, "not_run": []}
    if not cfg.bench.get("enabled", True):
        return summary_bench
    native = [lib for lib in libs if lib[3] == "native"]
    emulated = [lib for lib in libs if lib[3] == "emulated"]
    summary_bench["not_run"] = [{"target": t, "precision": p, "why": why}
                                for t, p, _, why in libs if why not in ("native", "emulated")]
    options = {"baselines": ("ort",)} | {k: v for k, v in cfg.bench.items() if k not in PIPELINE_KEYS["bench"]}
    if native:
        args = [str(a) for a in to_args(BenchConfig, options)]
        summary_bench["native"] = _bench_once(out, "bench.json", "bench", native, steps, failed, args, args)
    if emulated:  # counted on each board's core beside the board's own runtimes: the baselines alone apply
        peers = ",".join(b for b in options["baselines"] if b in ("ort", "tflite")) or "none"
        summary_bench["emulated"] = _bench_once(
            out, "emulated.json", "bench (emulated)", emulated, steps, failed, [peers],
            ["--emulate", "--baselines", peers])
    return summary_bench


def _report(out: Path, summary_bench: dict, steps: list, failed: dict, fail_on: str | None) -> str | None:
    """The report over this run's bench results and the earlier ones; returns a --fail-on regression, or None."""
    if not (summary_bench["native"] or summary_bench["emulated"]):
        return None
    regression = None
    step = Step("report")
    steps.append(step)
    history = sorted((out / "history").glob("*.json")) if (out / "history").is_dir() else []
    results = [Path(p) for p in (summary_bench["native"], summary_bench["emulated"]) if p]
    args = ["report", *history, *results, "--out", out / "report"]
    console.info(f"  {step.label()} ...")
    s0 = time.perf_counter()
    rc, _, error = _cli(args + (["--fail-on", fail_on] if fail_on else []))
    step.seconds = round(time.perf_counter() - s0, 1)
    step.status, step.path = ("done", str(out / "report")) if rc == 0 else ("failed", None)
    if rc == RegressionError.exit_code:
        regression, step.status, step.detail = error, "done", error
    elif rc != 0:
        step.detail = f"exit {rc}: {error}"
        failed.setdefault("report", step.detail)
    return regression


def check(summary: dict) -> None:
    """Raise PipelineError (exit 15) if a part failed, else RegressionError (13) on a --fail-on regression."""
    if summary["failed"]:
        raise PipelineError(f"{len(summary['failed'])} part(s) failed: "
                            + "; ".join(f"{k}: {v}" for k, v in summary["failed"].items())
                            + f" (summary: {Path(summary['out']) / 'pipeline.md'})")
    if summary["regression"]:
        raise RegressionError(summary["regression"])


def markdown(summary: dict) -> str:
    lines = [f"# squeezeedge pipeline: {Path(summary['config']).name}", "",
             f"{'all parts succeeded' if summary['ok'] else 'INCOMPLETE: ' + (', '.join(summary['failed']) or 'regression')}"
             f" in {summary['seconds']} s", "", "| stage | target | precision | status | s | detail |",
             "| --- | --- | --- | --- | ---: | --- |"]
    for s in summary["steps"]:
        lines.append(f"| {s['stage']} | {s['target'] or ''} | {s['precision'] or ''} | {s['status']} | "
                     f"{s['seconds']} | {s['detail']} |")
    if summary["bench"]["native"]:
        lines += ["", f"Native latency (this machine, one interleaved run): `{summary['bench']['native']}`, report in "
                      f"`{Path(summary['out']) / 'report' / 'report.md'}`."]
    if summary["bench"]["emulated"]:
        lines += ["", "Board work (instructions per inference counted on each target's core under qemu-user, beside "
                      f"onnxruntime and LiteRT on the same core; not a latency): `{summary['bench']['emulated']}`, in "
                      f"the report's boards section."]
    if summary["bench"]["not_run"]:
        lines += ["", "Not timed here: " + "; ".join(f"{r['target']} {r['precision']} ({r['why']})"
                                                    for r in summary["bench"]["not_run"])]
    if summary["bundles"]:
        lines += ["", "Bundles: " + ", ".join(f"`{Path(b).name}`" for b in summary["bundles"])]
    return "\n".join(lines) + "\n"
