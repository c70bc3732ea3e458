"""Stage: MetaSchedule tuning of a model's kernels for one target -> a tuning database directory.

One database per target and model: MetaSchedule's database ignores the target (apache/tvm#15549), so
the directory's manifest names both and ``build --database`` refuses a database made for anything else.
The database is written as MetaSchedule measures (one JSON line per record), so a killed run loses at
most the batch in flight, and rerunning with the same --out continues from what is there.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import MANIFEST, Artifact, hash_tree, load_artifact, peak_rss_mb, prepare_output, sha256_json, \
    tool_versions, _lock
from squeezeedge.errors import BoardLostError, InputError
from squeezeedge.options import option
from squeezeedge.targets import load_target

STATE_FILE = "tune-state.json"
# Each layer's fused kernel bakes in its own scales, so "structural" equality sees ~16 tasks per layer
# (196 for full int8 SqueezeBERT). Matching on the anchor (conv/matmul) block lets the 12 layers share
# schedules. Tuning, coverage and build must all use the same equality.
MODULE_EQUALITY = "anchor-block"
DB_FILES = ("database_workload.json", "database_tuning_record.json")
NO_BOARD = "no board left under key"


@dataclass(frozen=True)
class TuneConfig:
    """tune's options, declared once (squeezeedge.options): the CLI's options and the pipeline file's [tuning]
    keys come from these fields."""
    target: str = option("host", "A board in targets/.", cli=False, in_file=False)
    target_file: Path | None = option(None, "A user's board TOML file.", kind=Path, cli=False, in_file=False)
    trials: int | None = option(None, "Total measured trials for this database [default: the target's "
                                "tuning.trials]. Rerunning with more continues where it stopped.", kind=int, low=1)
    per_iteration: int | None = option(None, "Candidates measured per batch [default: the target's "
                                       "tuning.per_iteration].", kind=int, low=1)
    population: int = option(512, "Evolutionary search population per task (smaller is faster, less thorough).",
                             kind=int, low=1)
    all_tasks: bool = option(False, "Tune every kernel, not only the conv1d/matmul ones where nearly all the time "
                             "goes.", kind=bool, flag="--all-tasks")
    tracker: str | None = option(None, "HOST:PORT of a TVM RPC tracker: measure on the boards registered there "
                                 "instead of this machine.")
    key: str | None = option(None, "The boards' key at the tracker [default: the target's rpc_key].")
    seed: int = option(0, "Seed of the search.", kind=int)


def lowered_module(parent: Artifact, tvm_target):
    """The module as build compiles it: imported, integerized (int8), legalized and fused."""
    from squeezeedge.lowering import intrinsics  # noqa: F401  (the dot-product intrinsics)
    from squeezeedge.lowering.pipeline import fuse, relax_module

    return fuse(relax_module(parent, tvm_target)[0], tvm_target)


def _repair(path: Path) -> int:
    """Drop a torn last line (a kill mid-write) from a JSON-lines database file; returns lines kept."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            break
        good.append(line)
    if len(good) != len(lines):
        path.write_text("".join(line + "\n" for line in good))
    return len(good)


def _drop_unreplayable(out: Path) -> int:
    """Drop tuning records whose trace does not replay on their stored workload; returns how many.

    With anchor-block equality MetaSchedule files a new kernel under an old workload whose anchor block
    matches, even when the epilogue differs (here: erf became fast_erf), and the record's trace then
    fails to replay on the stored module. One such record makes the whole JSONDatabase refuse to load
    ("parallel_for_dynamic error"), losing every other record. Keeping only records that replay keeps
    the database loadable; the dropped ones are re-tuned on a later run.

    A tensorized trace names its tensor intrinsic, which replays only once registered: without
    :mod:`squeezeedge.lowering.intrinsics` imported first, every tensorized (vpdpbusd, vpmaddwd, sdot) record failed
    here and a resumed run threw away all the work it resumed.
    """
    from tvm.s_tir import meta_schedule as ms

    from squeezeedge.lowering import intrinsics  # noqa: F401  (the tensor intrinsics the records' traces name)

    wl_path, rec_path = out / DB_FILES[0], out / DB_FILES[1]
    if not rec_path.is_file() or not wl_path.is_file():
        return 0
    workloads = [ms.database.Workload.from_json(json.loads(line)) for line in wl_path.read_text().splitlines()]
    good = []
    lines = rec_path.read_text().splitlines()
    for line in lines:
        index, record = json.loads(line)
        try:
            ms.database.TuningRecord.from_json(record, workloads[index])
            good.append(line)
        except Exception:  # noqa: BLE001 (TVM raises a bare RuntimeError for a trace that does not replay)
            pass
    if len(good) != len(lines):
        tmp = rec_path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in good))
        tmp.replace(rec_path)
    return len(lines) - len(good)


def tune_model(model_dir: Path, cfg: TuneConfig, out: Path, force: bool = False) -> Artifact:
    """Tune the kernels of an export or quantize artifact for a target with MetaSchedule.

    Args:
        model_dir: an export (fp32) or quantize (int8) artifact.
        cfg: target, total trials for this database, candidates per batch, seed.
        out: the database directory; an unfinished one for the same model and target is resumed.
        force: discard an existing database in ``out`` and start again.

    Returns:
        The finished artifact; ``results`` holds trials, tasks, tuned tasks and wall time.

    Raises:
        InputError: trials <= 0, or ``out`` holds a database for another model or target.
    """
    parent = load_artifact(model_dir)
    if parent.stage not in ("export", "quantize"):
        raise InputError(f"{model_dir} is a '{parent.stage}' artifact; tune takes an export or quantize artifact")
    target = load_target(cfg.target, cfg.target_file)
    trials = cfg.trials if cfg.trials is not None else target.tuning.trials
    per_iter = cfg.per_iteration if cfg.per_iteration is not None else target.tuning.per_iteration
    if trials <= 0 or per_iter <= 0:
        raise InputError(f"--trials and --per-iteration must be > 0 (got {trials}, {per_iter})")
    tvm_target = target.tvm_target()
    key = cfg.key or target.rpc_key
    if target.is_cross and cfg.tracker is None:
        raise InputError(f"{target.name} kernels must be measured on the board: give --tracker HOST:PORT "
                         f"(and --key, default '{key}'); see 'squeezeedge fleet --help'")
    if cfg.tracker is not None:
        from squeezeedge.deploy.fleet import check_key

        boards = check_key(cfg.tracker, key)  # fails fast: unreachable tracker, unknown key
        console.info(f"  measuring on {boards} free board(s) under key '{key}' at {cfg.tracker}")
    identity = database_identity(parent.sha256, parent.stage, target.name, tvm_target)
    out = prepare_output(out, marker=STATE_FILE)
    with _lock(out):
        state_path = out / STATE_FILE
        if out.exists() and force:
            import shutil

            shutil.rmtree(out)
        if (out / MANIFEST).is_file() or state_path.is_file():
            state = json.loads(state_path.read_text()) if state_path.is_file() else \
                load_artifact(out, stage="tune", verify=False).manifest["config"]["identity"]
            if identity_mismatch(state, identity):
                raise InputError(f"{out} holds a database for {state['target']} / model {state['model_sha256'][:12]}; "
                                 f"this run is {target.name} / {parent.sha256[:12]} ({identity_mismatch(state, identity)}"
                                 "). Use another --out")
        out.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(identity, indent=2) + "\n")
        return _tune(parent, target, tvm_target, identity, trials, per_iter, cfg, out)


def database_identity(model_sha256: str, model_stage: str, target: str, tvm_target) -> dict:
    """What a tuning database is for: one model and one target (MetaSchedule's database ignores the target,
    apache/tvm#15549, so squeezeedge keeps one database per model and target and records this)."""
    return {"model_sha256": model_sha256, "model_stage": model_stage, "target": target, "tvm_target": str(tvm_target)}


def identity_mismatch(have: dict, want: dict) -> str | None:
    """Why a database made for ``have`` cannot serve ``want`` (both :func:`database_identity`), or None: the
    one check tune (resuming), build (--database) and the pipeline (choosing a database) make."""
    if have.get("target") != want["target"] or have.get("tvm_target") != want["tvm_target"]:
        return (f"it was tuned for target {have.get('target')}, not {want['target']} (MetaSchedule databases "
                "ignore the target, so squeezeedge keeps one per target)")
    if have.get("model_sha256") != want["model_sha256"]:
        return (f"it was tuned for model {str(have.get('model_sha256'))[:12]}, not this {want['model_stage']} "
                f"artifact ({want['model_sha256'][:12]})")
    return None


def _tune(parent, target, tvm_target, identity, trials, per_iter, cfg: TuneConfig, out: Path) -> Artifact:
    from tvm.s_tir import meta_schedule as ms

    from squeezeedge.lowering.int8 import AVX2, AVX2_U8S8, MAC_KERNELS, VNNI

    t0 = time.perf_counter()
    _repair(out / DB_FILES[0])
    _repair(out / DB_FILES[1])
    dropped = _drop_unreplayable(out)
    done_before = min(_repair(out / DB_FILES[1]), trials)
    (out / MANIFEST).unlink(missing_ok=True)  # not finished until the manifest is rewritten
    with console.step("extracting tuning tasks"), console.native_stderr_to_debug():
        mod = lowered_module(parent, tvm_target)
        tasks = ms.relax_integration.extract_tasks(mod, tvm_target, module_equality=MODULE_EQUALITY)
    # x86's packed kernels keep their default schedule (compiler/lowering/schedules.py). AVX2: MetaSchedule's
    # tiling onto our vpmaddwd intrinsic mostly failed to compile, and what compiled ran 20x slower.
    # VNNI: records a little faster alone never made the model faster, and at 16 tokens the tuned vpdpbusd
    # kernels ran slower in the model than their defaults though faster when tune timed them alone
    # (results/PERFORMANCE-LOG.md)
    chosen = [t for t in tasks if not any(p.block in t.task_name for p in (AVX2, AVX2_U8S8, VNNI))
              and (cfg.all_tasks or any(op in t.task_name for op in MAC_KERNELS))]
    runner, builder = _measurers(target, cfg)
    seeded = _seed_defaults(chosen, tvm_target, builder, runner, out, trials - done_before)
    done_before = min(_repair(out / DB_FILES[1]), trials)
    remaining = trials - done_before
    console.info(f"  {len(tasks)} tasks, tuning {len(chosen)} ({'all' if cfg.all_tasks else 'conv1d/matmul'}); "
                 f"{done_before} trials already in the database, {remaining} to run in batches of {per_iter} "
                 f"(target {target.name})")
    if remaining > 0:
        _search(chosen, runner, builder, cfg, target, out, done_before, trials, remaining, per_iter)
    dropped += _drop_unreplayable(out)
    if dropped:
        console.info(f"  dropped {dropped} record(s) whose schedule does not replay on their stored kernel")
    records = _repair(out / DB_FILES[1])
    tuned, tensorized = tuned_tasks(tasks, tvm_target, out)
    results = {"tasks": len(tasks), "tuned_tasks": tuned, "default_schedules_measured": seeded,
               "tensorized_tasks": tensorized, "records_dropped": dropped,
               "tasks_selected": len(chosen), "trials": records, "trials_requested": trials,
               "per_iteration": per_iter, "this_run_s": round(time.perf_counter() - t0, 1)}
    return _write_manifest(out, parent, identity, trials, per_iter, cfg, target, results, done_before)


def _measurers(target, cfg: TuneConfig):
    """MetaSchedule's (runner, builder): the boards behind a tracker, else this machine."""
    from tvm.s_tir import meta_schedule as ms

    if cfg.tracker is not None:
        host, port = cfg.tracker.rsplit(":", 1)
        runner = ms.runner.RPCRunner(rpc_config=ms.runner.RPCConfig(
            tracker_host=host, tracker_port=int(port), tracker_key=cfg.key or target.rpc_key,
            session_timeout_sec=60), f_create_session=functools.partial(_board_session, threads=target.threads))
    else:
        # candidates are timed in worker processes that inherit this environment: with the threads the
        # library will run with (TVM alone gives them half the logical CPUs, one on a 2-core machine: the
        # databases tuned that way lost to the 2-thread default schedules)
        from squeezeedge.runtime import configure_threads

        configure_threads(target.threads)
        runner = ms.runner.LocalRunner()
    # 30 s (the default) is too short on a busy 2-core machine for full-size kernels; a board's
    # kernels are linked with its cross compiler
    builder = ms.builder.LocalBuilder(timeout_sec=120, f_export=functools.partial(
        _cross_export, target.cross_triple) if target.is_cross else None)
    return runner, builder


def _search(chosen, runner, builder, cfg: TuneConfig, target, out: Path, done_before: int, trials: int,
            remaining: int, per_iter: int) -> None:
    """MetaSchedule's evolutionary search over ``chosen`` for ``remaining`` trials, into out's database."""
    from tvm.s_tir import meta_schedule as ms

    progress = _progress_callback([t.task_name for t in chosen], done_before, trials)
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = ms_logger.level
    if console.VERBOSITY < 2:
        ms_logger.setLevel(logging.WARNING)
    try:
        # MetaSchedule logs its tables to stdout, which belongs to --json
        sink = sys.stderr if console.VERBOSITY >= 2 else io.StringIO()
        with console.native_stderr_to_debug(), contextlib.redirect_stdout(sink):
            strategy = ms.search_strategy.EvolutionarySearch(population_size=cfg.population)
            ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                chosen, str(out / "logs"), strategy=strategy, seed=cfg.seed)
            ms.tune.tune_tasks(
                runner=runner, builder=builder,
                tasks=ctxs, task_weights=weights, work_dir=str(out / "logs"), max_trials_global=remaining,
                num_trials_per_iter=per_iter, database=ms.database.JSONDatabase(
                    path_workload=str(out / DB_FILES[0]), path_tuning_record=str(out / DB_FILES[1]),
                    module_equality=MODULE_EQUALITY),
                measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [progress],
                module_equality=MODULE_EQUALITY,
            )
    except Exception as exc:
        if NO_BOARD not in str(exc):
            raise
        records = _repair(out / DB_FILES[1])
        raise BoardLostError(f"no board left under key '{cfg.key or target.rpc_key}' at {cfg.tracker}; "
                             f"{records} trials are kept in {out} (rerun the same command to resume)") from None
    finally:
        ms_logger.setLevel(level)


def _write_manifest(out: Path, parent, identity: dict, trials: int, per_iter: int, cfg: TuneConfig, target,
                    results: dict, done_before: int) -> Artifact:
    """Append this run to tune-history.json and write the manifest last (the database is finished then)."""
    prev = out / "tune-history.json"
    history = json.loads(prev.read_text()) if prev.is_file() else []
    history.append({"trials_before": done_before, "trials_after": results["trials"], "wall_s": results["this_run_s"],
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    prev.write_text(json.dumps(history, indent=2) + "\n")
    results["tuning_wall_s_total"] = round(sum(h["wall_s"] for h in history), 1)
    files = hash_tree(out)
    manifest = {"schema_version": 1, "stage": "tune", "created": history[-1]["when"], "cache_key": None,
                "parent": {"path": str(parent.path), "stage": parent.stage, "sha256": parent.sha256},
                "config": {"identity": identity, "trials": trials, "per_iteration": per_iter, "seed": cfg.seed,
                           "population": cfg.population, "all_tasks": cfg.all_tasks,
                           "module_equality": MODULE_EQUALITY,
                           "runner": f"rpc {cfg.tracker} key {cfg.key or target.rpc_key}" if cfg.tracker else "local"},
                "results": results, "versions": tool_versions(), "wall_time_s": results["this_run_s"],
                "peak_rss_mb": peak_rss_mb(), "files": {k: v for k, v in files.items() if not k.startswith("logs/")},
                "artifact_sha256": sha256_json({k: v for k, v in files.items() if k in DB_FILES})}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(out / MANIFEST)
    return Artifact(out, manifest)



def _seed_defaults(tasks, tvm_target, builder, runner, out: Path, budget: int) -> int:
    """Measure each task's default schedule (squeezeedge.lowering.schedules.schedule_kernel) and record it, before
    the search: the search starts from the best records it has, and build takes a task's best record,
    so a database then never holds a schedule slower than the default it replaces (databases made
    before the default schedules improved ran slower than no database at all). Tasks the database
    already has a record for are skipped (a resumed run);
    returns how many were measured (one trial each, within ``budget``)."""
    from tvm.s_tir import meta_schedule as ms

    from squeezeedge.lowering.schedules import schedule_kernel

    db = open_database(out)
    todo = []
    for task in tasks:
        mod = task.dispatched[0]  # the kernel as the PrimFunc "main" of a module of its own
        if len(todo) >= budget or db.query_tuning_record(mod, tvm_target, task.task_name) is not None:
            continue
        sch, _ = schedule_kernel(mod, tvm_target)
        if sch is not None:
            todo.append((mod, sch))
    if not todo:
        return 0
    with console.step(f"measuring the default schedule of {len(todo)} task(s)"), console.native_stderr_to_debug():
        built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for _, sch in todo])
        device = "cpu" if tvm_target.kind.name == "llvm" else tvm_target.kind.name
        ok = [(mod, sch, ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"]), res.artifact_path)
              for (mod, sch), res in zip(todo, built) if not res.error_msg]
        futures = runner.run([ms.runner.RunnerInput(path, device, args) for _, _, args, path in ok])
        measured = 0
        for (mod, sch, args, _), future in zip(ok, futures):
            result = future.result()
            if result.error_msg or not result.run_secs:
                continue
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod),
                                                             [float(s) for s in result.run_secs], tvm_target, args))
            measured += 1
    return measured


def open_database(db_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    from squeezeedge.lowering import intrinsics  # noqa: F401  (loading a record replays its trace, tensor intrinsics included)

    return ms.database.JSONDatabase(path_workload=str(db_dir / DB_FILES[0]),
                                    path_tuning_record=str(db_dir / DB_FILES[1]), module_equality=MODULE_EQUALITY)


def tuned_tasks(tasks, tvm_target, db_dir: Path) -> tuple[int, int]:
    """(tasks the database holds a measured schedule for, of those how many tensorize onto a dot-product
    instruction)."""
    db = open_database(db_dir)
    records = [db.query_tuning_record(t.dispatched[0], tvm_target, t.task_name) for t in tasks]
    found = [r for r in records if r is not None]
    return len(found), sum(1 for r in found if any(i.kind.name == "Tensorize" for i in r.trace.insts))


def _board_session(rpc_config, threads: int = 0):
    """MetaSchedule's RPC session, except that it gives up when no board is left under the key (the
    tracker would queue the request forever): a board that drops mid-run costs the candidates it held,
    and the run goes on with the others; with none left, the candidate fails with NO_BOARD and the
    progress callback stops the run."""
    import threading

    from squeezeedge.deploy.fleet import boards

    addr = f"{rpc_config.tracker_host}:{rpc_config.tracker_port}"
    result: dict = {}

    def request():
        try:
            result["session"] = rpc_config.connect_server()
        except Exception as exc:  # noqa: BLE001 (handed to the caller below)
            result["error"] = exc

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(2.0)
        if thread.is_alive() and boards(addr, rpc_config.tracker_key) == 0:
            raise RuntimeError(f"{NO_BOARD} '{rpc_config.tracker_key}' at {addr}")
    if "error" in result:
        raise result["error"]
    try:  # time candidates with the board's threads as the library will run (0: all its cores)
        result["session"].get_function("runtime.config_threadpool")(1, threads)
    except Exception:  # noqa: BLE001 (a runtime without it keeps its defaults)
        pass
    return result["session"]


def _cross_export(triple: str, mod) -> str:
    """MetaSchedule builder export for cross targets: link the candidate with the board's g++."""
    import os
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="squeezeedge-candidate-"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(f"{triple}-g++"))
    return path


def _progress_callback(names: list[str], done_before: int, total: int):
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self):
            self.done, self.best, self.t0 = done_before, {}, time.perf_counter()
            self.start = done_before

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            if runner_results and all(NO_BOARD in str(r.error_msg or "") for r in runner_results):
                raise RuntimeError(NO_BOARD)  # every candidate of the batch found no board: stop here
            for res in runner_results:
                if res.run_secs:
                    sec = sum(float(s) for s in res.run_secs) / len(res.run_secs)
                    self.best[task_id] = min(self.best.get(task_id, sec), sec)
            self.done += len(measure_candidates)
            rate = (time.perf_counter() - self.t0) / max(self.done - self.start, 1)
            eta = rate * max(total - self.done, 0)
            best = self.best.get(task_id)
            console.info(f"  [{self.done}/{total} trials] task {task_id + 1}/{len(names)} "
                         f"{names[task_id][:40]}: best {best * 1e6:.1f} us" if best is not None else
                         f"  [{self.done}/{total} trials] task {task_id + 1}/{len(names)}: no valid candidate yet")
            console.info(f"      {len(self.best)} tasks measured, ETA {eta / 60:.1f} min")

    return Progress()


MIN_GAIN = 0.10  # a tuned record is used where it beat the default schedule by at least this, measured alone


def apply_database(mod, tvm_target, db_dir: Path):
    """Apply the database's best schedules to a fused module, kernel by kernel; returns (mod, applied, failed).

    With anchor-block equality, a record tuned on one layer's kernel is found for every layer whose
    conv/matmul block matches, but replaying its trace verbatim fails where the epilogue differs (TVM
    0.27's MetaScheduleApplyDatabase then aborts the whole build: "inst->outputs.size() <=
    outputs.size()"). Here a verbatim replay is tried first, then MetaSchedule's anchor-trace transfer,
    and a kernel that takes neither keeps its default schedule and is counted.

    Where a task's best record is its default schedule (tune measures and records it first), or beats it
    by less than :data:`MIN_GAIN`, every kernel of that task keeps its own default schedule instead
    ("default_best"): the default fits each layer's epilogue, while the record, replayed or transferred
    from the layer it was measured on, need not, and a kernel timed alone (its weights hot in cache) is
    not one of ~170 in a model: records a few percent faster alone made int8 SqueezeBERT slower in the
    model (results/PERFORMANCE-LOG.md).
    """
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace

    from squeezeedge.lowering.schedules import reschedule, schedule_kernel

    db = open_database(db_dir)
    is_default: dict[str, bool] = {}

    def seconds(record) -> float:
        return sum(float(s) for s in record.run_secs) / max(len(record.run_secs), 1)

    def default_best(record) -> bool:
        key = str(record.trace)
        if key not in is_default:
            sch, _ = schedule_kernel(record.workload.mod, tvm_target)
            default = str(sch.trace) if sch is not None else None
            mine = [r for r in db.get_top_k(record.workload, 10_000) if str(r.trace) == default]
            is_default[key] = bool(mine) and (key == default or seconds(record) > seconds(mine[0]) * (1 - MIN_GAIN))
        return is_default[key]

    def from_record(one):
        try:
            record = db.query_tuning_record(one, tvm_target, "main")
        except Exception:
            record = None
        if record is None:
            return None, "untuned"
        if default_best(record):
            return None, "default_best"
        for attempt in ("replay", "anchor"):
            try:
                sch = Schedule(one)
                if attempt == "replay":
                    record.trace.apply_to_schedule(sch, remove_postproc=False)
                else:
                    schedule_using_anchor_trace(sch, record.trace, tvm_target)
                return sch, "applied"
            except Exception:  # noqa: BLE001 (TVM's replay errors are bare RuntimeErrors: try the next way)
                continue
        return None, "failed"

    mod, counts = reschedule(mod, from_record)
    return mod, counts["applied"], counts["failed"], counts["default_best"]
