"""The squeezeedge command line. Commands parse, validate, call a stage function and print; no logic here."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from squeezeedge import console
from squeezeedge.errors import SqueezeEdgeError
from squeezeedge.options import click_options, from_cli
from squeezeedge.measure.bench import BenchConfig
from squeezeedge.stages.build import BuildConfig
from squeezeedge.stages.export import ExportConfig
from squeezeedge.stages.quantize import QuantizeConfig
from squeezeedge.stages.tune import TuneConfig

EPILOG = "Exit codes: see 'Errors and exit codes' in README.md."


class Group(click.Group):
    """Turns any SqueezeEdgeError into a one-line message and its exit code; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SqueezeEdgeError as exc:
            click.echo(f"squeezeedge: {exc.kind}: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("squeezeedge: interrupted; no partial artifact was left behind", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: one line by default, the traceback with -v
            if console.VERBOSITY >= 2:
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"squeezeedge: internal error: {type(exc).__name__}: {first} (rerun with -v for details)",
                       err=True)
            ctx.exit(1)


def _emit(ctx, payload: dict, text: str) -> None:
    if ctx.obj["json"]:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        click.echo(text)


def _stage_payload(run) -> dict:
    return {"path": str(run.artifact.path), "skipped": run.skipped, "manifest": run.artifact.manifest}


@click.group(cls=Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("build"), show_default=True,
              help="Where stage outputs go when --out is not given.")
@click.option("-v", "--verbose", count=True, help="More detail (tool chatter, tracebacks of internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.option("--targets-dir", type=click.Path(path_type=Path), default=None,
              help="Your own board TOML files, looked up by --target before the shipped ones "
                   "[env: SQUEEZEEDGE_TARGETS_DIR].")
@click.version_option(package_name="squeezeedge")
@click.pass_context
def main(ctx, workdir: Path, verbose: int, quiet: bool, as_json: bool, targets_dir: Path | None):
    """squeezeedge: compile SqueezeBERT to calibrated int8, tuned TVM libraries for edge boards.

    \b
    The flow (each stage reads an artifact directory and writes a new one with manifest.json):
      export    PyTorch -> ONNX, validated against PyTorch
      quantize  ONNX + calibration text -> int8 QDQ ONNX + fidelity report
      tune      MetaSchedule tuning database for one target
      build     deployable library (.so) + metadata.json
      bench     latency of a library and baselines on a device
      report    tables and plots from bench results
      pipeline  all of the above for many boards from one TOML file
    A stage whose inputs have not changed is skipped; --force reruns it.
    """
    console.VERBOSITY = 0 if quiet else 1 + verbose
    ctx.obj = {"workdir": workdir, "json": as_json}
    if targets_dir is not None:  # an environment variable, so that worker processes see it too
        from squeezeedge.resources import TARGETS_ENV

        os.environ[TARGETS_ENV] = str(targets_dir.resolve())


def _out(ctx, out: Path | None, stage: str) -> Path:
    return out if out is not None else ctx.obj["workdir"] / stage


def target_options(help_target: str = "A board in targets/ (squeezeedge targets)."):
    """--target NAME and --target-file PATH, the same on every command that takes a board."""
    def wrap(fn):
        fn = click.option("--target-file", type=click.Path(path_type=Path), default=None,
                          help="A user's board TOML file (wins over --target).")(fn)
        return click.option("--target", default="host", show_default=True, help=help_target)(fn)
    return wrap


def _finish(ctx, run, verb: str, path: Path, details: str) -> None:
    """Print a stage's outcome: what was written (or skipped), then its numbers."""
    if run.skipped:
        console.info("  same inputs as the existing artifact: stage skipped (use --force to rerun)")
    _emit(ctx, _stage_payload(run), f"{'skipped (unchanged)' if run.skipped else verb}: {path}\n{details}")


@main.command(epilog=EPILOG)
@click_options(ExportConfig)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory [WORKDIR/export].")
@click.option("--force", is_flag=True, help="Rerun even if --out already holds this export.")
@click.pass_context
def export(ctx, out, force, **options):
    """Export SqueezeBERT to ONNX and check it against PyTorch.

    Builds the model (a preset with seeded random init, as no model hub is reachable, or a local
    checkpoint), exports it with torch.export to ONNX opset 18 with static shapes, and runs onnxruntime
    and PyTorch on several random inputs: the max abs difference is recorded in manifest.json and the
    export fails past --tolerance. Prints the parameter count, file size and time.

    \b
    Example:
      squeezeedge export --model squeezebert-tiny --seq-len 64 --out build/tiny
    """
    from squeezeedge.stages.export import export_model

    cfg = from_cli(ExportConfig, options)
    run = export_model(cfg, _out(ctx, out, "export"), force=force)
    r = run.artifact.results
    _finish(ctx, run, "exported", run.artifact.file("model.onnx"),
            f"  {r['model_type']} {r['head']}, {r['parameters'] / 1e6:.1f}M parameters, "
            f"{r['onnx_bytes'] / 1e6:.1f} MB, max abs diff vs PyTorch {r['validation']['max_abs_diff']:.2e} "
            f"(limit {r['validation']['tolerance']:g}), {run.artifact.manifest['wall_time_s']:.1f} s")


@main.command(epilog=EPILOG)
@click.argument("export_dir", type=click.Path(path_type=Path))
@target_options("Target whose int8 preset applies.")
@click_options(QuantizeConfig)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory [WORKDIR/quantize].")
@click.option("--force", is_flag=True, help="Rerun even if --out already holds this result.")
@click.pass_context
def quantize(ctx, export_dir, target, target_file, out, force, **options):
    """Quantize an exported model to int8 (QDQ) with calibration text, and check its fidelity.

    Tokenizes the texts with the model's tokenizer (a checkpoint's own, else the bert-base-uncased
    WordPiece vocabulary SqueezeBERT uses), splits them by --seed into calibration and held-out sets,
    and runs onnxruntime's quantize_static (QDQ format; Conv, MatMul and Gemm quantized; s8 weights,
    activations per the target's preset). Writes model.onnx (int8 QDQ), quant_params.json (scale, zero
    point, dtype and axis of every quantized tensor, for the TVM int8 lowering) and manifest.json.

    Fidelity, fp32 vs int8 on the held-out texts: max abs error, mean cosine, top-1 agreement. It is
    printed, recorded, and the stage fails (exit 6, nothing written) below --min-cosine or --min-agreement.

    \b
    Example:
      squeezeedge quantize build/tiny --method percentile --out build/tiny-int8
    """
    from squeezeedge.stages.quantize import quantize_model

    cfg = from_cli(QuantizeConfig, options, target=target, target_file=target_file)
    run = quantize_model(export_dir, cfg, _out(ctx, out, "quantize"), force=force)
    r = run.artifact.results
    f = r["fidelity"]
    _finish(ctx, run, "quantized", run.artifact.file("model.onnx"),
            f"  {r['method']}, {r['scheme']['activations']}/{r['scheme']['weights']}, "
            f"{r['quantized_tensors']} quantized tensors, {r['fp32_bytes'] / 1e6:.1f} MB -> "
            f"{r['int8_bytes'] / 1e6:.1f} MB\n"
            f"  fidelity on {f['samples']} held-out texts: mean cosine {f['mean_cosine']:.5f}, top-1 agreement "
            f"{f['top1_agreement']:.3f}, max abs error {f['max_abs_error']:.3g}")


@main.command(epilog=EPILOG)
@click.argument("model_dir", type=click.Path(path_type=Path))
@target_options()
@click_options(BuildConfig)
@click.option("--bundle", is_flag=True, help="Also write OUT.tar.gz: library, runner, board runtime, example, README.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory [WORKDIR/build].")
@click.option("--force", is_flag=True, help="Rebuild even if --out already holds this build.")
@click.option("--dump-ir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write the IR after each lowering step into this directory, one NN-<step>.py a step "
                   "(the build then runs even if --out holds it).")
@click.pass_context
def build(ctx, model_dir, target, target_file, bundle, out, force, dump_ir, **options):
    """Compile an exported (fp32) or quantized (int8) model into a deployable library.

    ONNX -> TVM Relax with the artifact's static shapes -> TVM's build pipeline -> model.so, plus
    metadata.json (model, precision, target, tuning coverage, input/output names, shapes and dtypes,
    library sha256, versions).

    int8 models compute in integers: every dequantize -> conv1d/matmul pattern becomes a u8/s8 x s8
    -> int32 kernel with the rescale fused after it, using the quantize stage's scales; the build fails
    if a quantized layer would still multiply in float. Host builds are run on random inputs and
    checked against onnxruntime on the same ONNX (fp32: max abs diff <= 1e-4; int8: cosine >= 0.99 to
    its op-by-op QDQ output, or within 0.01 of how close onnxruntime's own integer path gets to it).

    Cross builds (rpi4, rpi5, Jetson CPU) link with Debian's aarch64 g++ and are run under qemu-user
    through the C++ deploy runner and the apache-tvm aarch64 runtime, and checked the same way.
    --bundle writes OUT.tar.gz for the board (see its README.md).

    Load the result in Python with squeezeedge.runtime.load(DIR).

    \b
    Example:
      squeezeedge build build/tiny-int8 --target host --out build/tiny-int8-host
      squeezeedge build build/tiny-int8 --target rpi5 --bundle --out build/tiny-int8-rpi5
    """
    from squeezeedge.stages.build import build_library

    cfg = from_cli(BuildConfig, options, target=target, target_file=target_file)
    out = _out(ctx, out, "build")
    run = build_library(model_dir, cfg, out, force=force, dump_ir=dump_ir)
    if dump_ir is not None:
        console.info(f"IR after each lowering step: {dump_ir} ({len(list(dump_ir.glob('[0-9][0-9]-*.py')))} files)")
    if bundle:
        from squeezeedge.deploy.bundle import bundle_library

        tarball = bundle_library(run.artifact, gpu_bounds=(cfg.fp32_tolerance, cfg.int8_min_cosine))
        console.info(f"bundle: {tarball}")
    r = run.artifact.results
    cov = r["int8"]
    tuned = r["tuning"]
    tuning = (f", tuned {tuned['tuned_tasks']}/{tuned['tasks']} tasks" if r["database"] else ", untuned")
    ints = (f", {cov['integer_kernels']}/{cov['quantized_layers']} quantized layers as integer kernels"
            if cov else "")
    val = r["validation"]
    check = (f", vs onnxruntime{' (run under qemu)' if 'qemu' in val.get('ran', '') else ''}: max abs diff "
             f"{val['max_abs_diff']:.2e}, min cosine {val['min_cosine']:.5f}"
             if val else " (not run here: --no-emulate, or this CPU lacks the target's ISA extensions)")
    if r.get("cuda"):
        cu, cpu = r["cuda"], r["cpu_library"]
        check = (f"; CUDA kernels: {', '.join(b['kind'] + ' ' + b['arch'] for b in cu['device_binaries'])} "
                 f"(not run: no GPU here)\n  CPU library {cpu['file']} for {cpu['target']['name']}"
                 + (f", run {'under qemu' if 'qemu' in cpu['validation']['ran'] else 'natively'}: max abs diff "
                    f"{cpu['validation']['max_abs_diff']:.2e}" if cpu["validation"]
                    else ", not run (--no-emulate)"))
    lengths = (f", any length 1..{r['lengths'][-1]} tokens (buckets {', '.join(map(str, r['lengths']))})"
               if r.get("lengths") else "")
    _finish(ctx, run, "built", run.artifact.file("model.so"),
            f"  {r['precision']} for {r['target']['name']}{ints}{tuning}{lengths}, {r['library']['bytes'] / 1e6:.1f} MB"
            f"{check}\n"
            f"  load it: python -c \"import squeezeedge.runtime as rt; m = rt.load('{run.artifact.path}'); "
            f"print(m.inputs)\"")


@main.command(epilog=EPILOG)
@click.argument("model_dir", type=click.Path(path_type=Path))
@target_options()
@click_options(TuneConfig)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Database directory [WORKDIR/tune].")
@click.option("--force", is_flag=True, help="Discard the database in --out and start again.")
@click.pass_context
def tune(ctx, model_dir, target, target_file, out, force, **options):
    """Tune a model's kernels for one target with TVM MetaSchedule, into a database directory.

    Extracts the tuning tasks from the module exactly as 'build' compiles it (int8 models after the
    integer rewrite), then measures candidate schedules on this machine. The database is one per
    target and model: MetaSchedule's database ignores the target (apache/tvm#15549), so the directory
    records both and 'build --database' refuses any other pairing.

    Records are written as they are measured: a killed run loses at most the batch in flight, and
    rerunning the same command continues from the database up to --trials. Progress (trials done,
    task, best latency, ETA) goes to stderr; --json prints the summary.

    \b
    Example:
      squeezeedge tune build/tiny-int8 --target host --trials 64 --out build/tiny-int8-db
      squeezeedge build build/tiny-int8 --target host --database build/tiny-int8-db --out build/lib
    """
    from squeezeedge.stages.tune import tune_model

    cfg = from_cli(TuneConfig, options, target=target, target_file=target_file)
    art = tune_model(model_dir, cfg, _out(ctx, out, "tune"), force=force)
    r = art.results
    text = (f"tuned: {art.path}\n  {r['trials']} trials in the database ({r['trials_requested']} asked), "
            f"{r['tuned_tasks']}/{r['tasks']} tasks with a tuned schedule ({r['tensorized_tasks']} tensorized), this run {r['this_run_s']} s, "
            f"all runs {r['tuning_wall_s_total']} s")
    _emit(ctx, {"path": str(art.path), "manifest": art.manifest}, text)


@main.command(epilog=EPILOG)
@click.argument("lib_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="LIB_DIR...")
@click_options(BenchConfig)
@click.option("--emulate", is_flag=True,
              help="aarch64 libraries: count instructions per inference on the target's own core under qemu-user, "
                   "beside onnxruntime's and LiteRT's aarch64 wheels on the same core (no timing; one thread; "
                   "needs 'squeezeedge setup-emulation' once).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="results/NAME.json")
@click.pass_context
def bench(ctx, lib_dirs, emulate, out, **options):
    """Time built libraries next to PyTorch, onnxruntime and TFLite on the same device, in one run.

    Every runtime gets the same input and thread count; rounds are interleaved so machine noise hits
    all alike. Writes median, p90, p99, std, raw samples, a VALID/INVALID verdict with reasons, the
    machine, git commit and tool versions (schema: compiler/measure/bench_schema.json). A baseline that
    cannot run here is reported as skipped, with why, and the rest run.

    \b
    Example:
      squeezeedge bench build/demo/int8-host build/demo/fp32-host --out results/host.json
      squeezeedge report results/host.json --out results/report
    """
    from squeezeedge.measure.bench import bench as run_bench, resolved

    cfg = from_cli(BenchConfig, options, workdir=ctx.obj["workdir"])
    if emulate:
        return _bench_emulated(ctx, lib_dirs, resolved(cfg, list(lib_dirs), emulate=True).baselines, cfg.tracker,
                               cfg.texts, out)
    rep = run_bench(list(lib_dirs), cfg, out)
    from squeezeedge.measure.report import _md, headline_table, text_table

    text = text_table(rep)
    _emit(ctx, rep, f"bench: {out} ({rep['verdict']}, {rep['method']['rounds']} rounds on {rep['device']['label']})\n"
                    + (_md(text) + "\n\n" if text else "") + _md(headline_table(rep)))


def _bench_emulated(ctx, lib_dirs, wanted, tracker, texts, out):
    from squeezeedge.errors import InputError
    from squeezeedge.measure.emulate import EmulateConfig, emulate, ensure_ready
    from squeezeedge.measure.board_report import instruction_table
    from squeezeedge.measure.report import _md

    if tracker:
        raise InputError("--emulate counts here under qemu; it does not take --tracker")
    if bad := set(wanted) - {"ort", "tflite"}:
        raise InputError(f"--emulate runs the board's own runtimes: ort, tflite (not {', '.join(sorted(bad))})")
    ensure_ready()
    rep = emulate(list(lib_dirs), EmulateConfig(baselines=wanted, texts=texts, workdir=ctx.obj["workdir"]), out)
    _emit(ctx, rep, f"bench --emulate: {out} (instructions per inference, emulated cores)\n"
                    + "\n\n".join(_md(instruction_table(b)) for b in rep["boards"]))


@main.command("setup-emulation", epilog=EPILOG)
@click.option("--force", is_flag=True, help="Fetch everything again.")
@click.pass_context
def setup_emulation(ctx, force):
    """Set up counting a board's work with no board (once; a CI job can cache the directory).

    Fetches Debian's arm64 CPython and PyPI's aarch64 onnxruntime, numpy and LiteRT wheels into
    ~/.cache/squeezeedge/board-python (or $SQUEEZEEDGE_BOARD_PYTHON) and compiles the qemu
    instruction-counting plugin with this machine's gcc. Needs qemu-user (make toolchain) and, as
    root, apt with the arm64 architecture (added here when missing).
    """
    from squeezeedge.deploy.board_python import setup

    home = setup(force=force)
    _emit(ctx, {"path": str(home)}, f"board emulation ready: {home}")


@main.command(epilog=EPILOG)
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RESULT.json...")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for report.md/.html and PNGs.")
@click.option("--fail-on", default=None, metavar="median:P%,instructions:P%",
              help="Exit 13 if a library's median is more than P% above the previous run on the same device, "
                   "or (instructions) its instructions per inference on an emulated core at any length or per "
                   "text; one or both, comma-separated.")
@click.pass_context
def report(ctx, results, out, fail_on):
    """Render bench results into Markdown and HTML tables and PNG plots.

    Latency per device per runtime, speed-up over each baseline, output agreement (int8 fidelity),
    model size; compares across devices and across runs (history per device).
    """
    from squeezeedge.measure.report import render

    res = render(list(results), out, fail_on)
    _emit(ctx, res, f"report: {out / 'report.md'} ({res['runs']} run(s)); also report.html and "
                    f"{', '.join(res['files'][2:])}\n{res['headline']}")


@main.command(epilog=EPILOG)
@click.argument("file", type=click.Path(path_type=Path), metavar="FILE.toml")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for every stage's output.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Targets built in parallel.")
@click.option("--fail-on", default=None, metavar="median:P%,instructions:P%",
              help="Exit 13 if a library's median (native) or instructions per inference (emulated board core) "
                   "is more than P% above the previous run in OUT/history; one or both, comma-separated.")
@click.pass_context
def pipeline(ctx, file, out, jobs, fail_on):
    """Export, quantize, (tune,) build with bundles, bench and report for many boards, from one file.

    \b
    FILE names the model, calibration and recipe, tuning and targets (examples/pipeline-tiny.toml):
      targets = ["host", "rpi5"]        precisions = ["int8"]
      [model] preset|checkpoint, seq_len, dynamic    [quantize] calibration_data, num_samples, ...
      [tuning] database = "none" | "shipped" | DIR of TARGET-PRECISION databases; or tracker, key, trials
      [bench] baselines, min_seconds, enabled
    Export runs once, quantize once per distinct int8 preset, build per target and precision. Libraries
    that run here are timed in one interleaved bench; aarch64 ones are counted (bench --emulate:
    instructions per inference on the target's core under qemu-user, beside onnxruntime and LiteRT),
    reported apart, never as a time. Every stage is cached: a rerun with nothing changed says what it
    skipped. A target that fails is named and the others finish (exit 15); OUT/pipeline.md and
    OUT/pipeline.json summarize.
    """
    from squeezeedge.pipeline import check, load_config, markdown, run

    summary = run(load_config(file), out, jobs=jobs, fail_on=fail_on)
    _emit(ctx, summary, markdown(summary).rstrip())
    check(summary)


@main.group(epilog=EPILOG)
def fleet():
    """Start, query and stop a board fleet: TVM's own RPC tracker and servers.

    \b
      squeezeedge fleet up --server host       # tracker on 127.0.0.1:9190 + one local server
      squeezeedge fleet status                 # registered keys and free boards
      squeezeedge tune MODEL --tracker 127.0.0.1:9190 --key host ...
      squeezeedge fleet down
    Boards join with: python -m tvm.exec.rpc_server --tracker HOST:9190 --key rpi4
    Security: TVM RPC has no authentication; anyone who reaches the tracker or a server can run code
    on it. Everything here binds to 127.0.0.1 unless --host says otherwise; expose it only on a
    network you trust (or through an SSH tunnel).
    """


def _fleet_dir(ctx) -> Path:
    return ctx.obj["workdir"] / "fleet"


@fleet.command("up", epilog=EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the tracker binds to.")
@click.option("--port", type=int, default=9190, show_default=True)
@click.option("--server", "servers", multiple=True, metavar="KEY",
              help="Also start an RPC server on this machine registered under KEY (repeatable).")
@click.option("--emulated", "emulated", multiple=True, metavar="KEY",
              help="Also start an emulated aarch64 board (qemu-user) registered under KEY (repeatable).")
@click.pass_context
def fleet_up(ctx, host, port, servers, emulated):
    """Start a TVM RPC tracker (and local RPC servers) in the background.

    --emulated KEY starts an aarch64 board with no board: a TVM RPC server whose sessions run the
    aarch64 TVM runtime under qemu-user, so 'tune --target rpi5 --tracker ...' and 'bench --tracker'
    run real aarch64 code (sdot included) from CI. Its timings are qemu's, not a board's.
    """
    from squeezeedge.deploy.fleet import up

    state = up(_fleet_dir(ctx), host=host, port=port, servers=tuple(servers), emulated=tuple(emulated))
    _emit(ctx, state, f"tracker up at {state['tracker']} (pids {state['pids']}); registered: "
                      f"{', '.join(f'{k} ({n} free)' for k, n in state['registered'].items()) or 'none'}")


@fleet.command("status", epilog=EPILOG)
@click.option("--tracker", default=None, metavar="HOST:PORT", help="[default: the tracker 'fleet up' started]")
@click.pass_context
def fleet_status(ctx, tracker):
    """List the keys registered at the tracker and how many boards under each are free."""
    from squeezeedge.deploy.fleet import STATE, registered_keys, summary

    if tracker is None:
        state_path = _fleet_dir(ctx) / STATE
        if not state_path.is_file():
            raise click.UsageError("no fleet started here; give --tracker HOST:PORT")
        tracker = json.loads(state_path.read_text())["tracker"]
    keys = registered_keys(summary(tracker))
    _emit(ctx, {"tracker": tracker, "registered": keys},
          f"tracker {tracker}: " + (", ".join(f"{k} ({n} free)" for k, n in sorted(keys.items())) or "no boards"))


@fleet.command("down", epilog=EPILOG)
@click.pass_context
def fleet_down(ctx):
    """Stop the tracker and servers that 'fleet up' started."""
    from squeezeedge.deploy.fleet import down

    stopped = down(_fleet_dir(ctx))
    _emit(ctx, {"stopped": stopped}, f"stopped {len(stopped)} process(es)")


@main.group(invoke_without_command=True, epilog=EPILOG)
@click.pass_context
def targets(ctx):
    """List the known boards (targets/*.toml), or show one with 'targets show NAME'.

    A board is one TOML file: a user adds a board by adding a file to a directory of their own
    (--targets-dir DIR or $SQUEEZEEDGE_TARGETS_DIR; it overrides a shipped board of the same name), or
    passes --target-file PATH.
    """
    if ctx.invoked_subcommand is not None:
        return
    from squeezeedge.targets import known_targets, load_target

    rows = [load_target(n) for n in known_targets()]
    payload = [{"name": t.name, "device": t.device, "cross_triple": t.cross_triple, "description": t.description}
               for t in rows]
    text = "\n".join(f"{t.name:<18} {t.device:<5} {t.cross_triple or 'native':<18} {t.description}" for t in rows)
    _emit(ctx, {"targets": payload}, text)


@targets.command("show", epilog=EPILOG)
@click.argument("name", required=False)
@click.option("--target-file", type=click.Path(path_type=Path), default=None, help="A user's board TOML file.")
@click.pass_context
def targets_show(ctx, name, target_file):
    """Print a target file as parsed and the TVM target it resolves to (host included).

    TVM itself checks the target here, so a board file TVM would reject fails now, not mid-build.
    """
    from squeezeedge.targets import load_target

    t = load_target(name, target_file)
    resolved = t.tvm_target_json()
    payload = t.to_dict() | {"tvm_target": resolved}
    text = (f"# {t.source}\n{t.text.rstrip()}\n\n# resolved TVM target (accepted by TVM)\n"
            f"{json.dumps(resolved, indent=2)}")
    _emit(ctx, payload, text)


@main.command(epilog=EPILOG)
@click.argument("directory", type=click.Path(path_type=Path))
@click.pass_context
def inspect(ctx, directory):
    """Print an artifact's story: stage, parent, config, results, tool versions, files (sha256 checked)."""
    from squeezeedge.artifact import load_artifact
    from squeezeedge.inspect import describe

    art = load_artifact(directory, verify=True)
    _emit(ctx, art.manifest, describe(art))


@main.command(epilog=EPILOG)
@click.argument("lib_dir", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Timed runs after one warm-up.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True, help="Kernels to print.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="TVM threads [default: the library's own, as squeezeedge.runtime.load sets it]")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="Tokens per input, for a library that takes any length [default: its longest]")
@click.pass_context
def profile(ctx, lib_dir, runs, top, threads, seq_len):
    """Where a library's time goes: milliseconds per inference of each kernel (this machine only).

    \b
    Example:
      squeezeedge profile build/demo/int8-x86-avx2 --runs 5
    """
    from squeezeedge.runtime import load_metadata

    load_metadata(lib_dir)  # a clear error for a directory that is not a library, before TVM starts
    from squeezeedge.measure.profile import profile as run_profile

    rep = run_profile(lib_dir, runs=runs, threads=threads, seq_len=seq_len)
    lines = [(f"{lib_dir}: {rep['wall_ms']} ms per inference ({runs} runs, {rep['thread_pool']['threads']} threads); "
             f"{rep['profiled_wall_ms']} ms under the profiler (its hook costs ~5 us a VM call: most of the "
             "vm.builtin rows)"),
             f"  {'ms':>8} {'share':>6} {'calls':>5}  kernel"]
    lines += [f"  {r['ms']:8.2f} {r['share']:6.1%} {r['calls']:5d}  {r['kernel'][:100]}" for r in rep["kernels"][:top]]
    _emit(ctx, rep, "\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
