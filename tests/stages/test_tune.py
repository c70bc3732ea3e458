"""MetaSchedule tuning: a real database, applied by build, resumable after SIGKILL, one per target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from squeezeedge import runtime
from squeezeedge.runtime import random_inputs
from squeezeedge.stages.quantize import reference_session

from ..conftest import TINY_SEQ, cli

QUICK = ["--per-iteration", "8", "--population", "32"]


def run_cli(*args, **kw):
    """The real command in its own process, as a user runs it (MetaSchedule's worker pools behave
    differently inside a pytest process that already holds torch and onnxruntime)."""
    return subprocess.run([sys.executable, "-m", "squeezeedge", *map(str, args)], capture_output=True, text=True,
                          timeout=900, **kw)


@pytest.fixture(scope="session")
def tiny_db(tiny_int8, tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "db-host"
    res = run_cli("-q", "tune", tiny_int8, "--target", "host", "--trials", "16", *QUICK, "--out", out)
    assert res.returncode == 0, res.stderr
    return out


def test_tune_writes_a_database_for_model_and_target(tiny_db, tiny_int8):
    m = json.loads((tiny_db / "manifest.json").read_text())
    r = m["results"]
    # the defaults are measured first, the rest in whole batches of 8: at most a batch past the 16 asked
    assert m["stage"] == "tune" and 16 <= r["trials"] < 16 + 8 and r["tasks"] > 10
    assert 1 <= r["tuned_tasks"] <= r["tasks"]
    ident = m["config"]["identity"]
    assert ident["target"] == "host"
    assert ident["model_sha256"] == json.loads((tiny_int8 / "manifest.json").read_text())["artifact_sha256"]
    records = (tiny_db / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == r["trials"] and all(json.loads(line) for line in records)


def test_build_applies_the_database(tiny_db, tiny_int8, tmp_path):
    out = tmp_path / "tuned"
    res = cli("-q", "build", tiny_int8, "--database", tiny_db, "--out", out)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metadata.json").read_text())
    # kernels whose task has a record took it, or kept their default where the record beat it by less
    # than MIN_GAIN (on VNNI the tuned tasks are the attention matmuls, whose defaults often win)
    t = meta["tuning"]
    assert t["kernels_with_tuned_schedule"] + t["kernels_kept_default_schedule"] >= 1
    assert meta["tuning"]["tuned_tasks"] >= 1 and meta["tuning"]["tasks"] > 10
    assert meta["database"]["sha256"] == json.loads((tiny_db / "manifest.json").read_text())["artifact_sha256"]
    assert meta["int8"]["compiled_float_mac_kernels"] == 0
    model, sess = runtime.load(out), reference_session(tiny_int8 / "model.onnx")
    for i in range(3):
        feed = random_inputs(30528, 2, 1, TINY_SEQ, 500 + i)
        np.testing.assert_allclose(model(**feed)[0], sess.run(None, feed)[0], atol=1e-3, rtol=0)


def test_database_of_another_target_is_refused(tiny_db, tiny_int8, tmp_path):
    res = cli("build", tiny_int8, "--target", "x86-avx512", "--database", tiny_db, "--out", tmp_path / "o")
    assert res.exit_code == 3 and "was tuned for target host, not x86-avx512" in res.stderr


def test_database_of_another_model_is_refused(tiny_db, tiny_export, tmp_path):
    res = cli("build", tiny_export, "--database", tiny_db, "--out", tmp_path / "o")
    assert res.exit_code == 3 and "was tuned for model" in res.stderr
    res = cli("tune", tiny_export, "--trials", "8", *QUICK, "--out", tiny_db)
    assert res.exit_code == 3 and "holds a database for host" in res.stderr


@pytest.mark.parametrize("trials", ["0", "-5"])
def test_zero_or_negative_trials(tiny_int8, tmp_path, trials):
    res = cli("tune", tiny_int8, "--trials", trials, "--out", tmp_path / "db")
    assert res.exit_code == 3 and f"--trials must be >= 1, got {trials}" in res.stderr
    assert not (tmp_path / "db").exists()


def test_sigkill_mid_tune_then_resume(tiny_int8, tmp_path):
    """Kill a real tuning process after its first batch; the rerun keeps those records and finishes."""
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "squeezeedge", "-q", "tune", str(tiny_int8), "--trials", "16", *QUICK,
           "--out", str(db)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = db / "database_tuning_record.json"
    deadline = time.time() + 1800  # a guard, not a timing: the first batch took over 300 s beside make bench-boards
    try:
        while time.time() < deadline and proc.poll() is None:
            if records.is_file() and len(records.read_text().splitlines()) >= 8:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "tuning ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = len(records.read_text().splitlines())
    assert 8 <= kept < 16 and not (db / "manifest.json").exists()
    res = run_cli("-q", "--json", "tune", tiny_int8, "--trials", "16", *QUICK, "--out", db)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["manifest"]["results"]
    assert r["trials"] == 16
    history = json.loads((db / "tune-history.json").read_text())
    assert history[-1]["trials_before"] >= 8  # resumed, not restarted


def test_a_tensorized_record_that_replays_is_kept(tmp_path):
    """A record whose trace tensorizes onto one of our intrinsics replays once the intrinsic is registered,
    so a fresh process resuming a database (which has imported nothing of ours yet) must keep it. Before
    the fix every tensorized record was dropped there: all of a VNNI machine's records (issue 19)."""
    import tvm
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from squeezeedge.lowering import intrinsics  # noqa: F401
    from squeezeedge.lowering.int8 import AVX2_U8S8, _te_packed
    from squeezeedge.lowering.schedules import tensorize_packed
    from squeezeedge.stages.tune import DB_FILES, MODULE_EQUALITY

    mod = tvm.IRModule({"main": _te_packed((1, 16, 64), 32, 1, "main", AVX2_U8S8)})
    sch = Schedule(mod)
    tensorize_packed(sch, AVX2_U8S8)
    assert "tensorize" in str(sch.trace)
    db = ms.database.JSONDatabase(path_workload=str(tmp_path / DB_FILES[0]),
                                  path_tuning_record=str(tmp_path / DB_FILES[1]), module_equality=MODULE_EQUALITY)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2})
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), [1e-5], target))
    code = ("import sys; from pathlib import Path; from squeezeedge.stages.tune import _drop_unreplayable; "
            "print(_drop_unreplayable(Path(sys.argv[1])))")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "0"
    assert len((tmp_path / DB_FILES[1]).read_text().splitlines()) == 1


def test_a_database_of_defaults_builds_the_default_schedules(tiny_db, tiny_int8, tmp_path):
    """tune measures and records each selected task's default schedule first; where that is a task's
    best record, build gives every kernel of the task its own default schedule (fitted to its epilogue)
    rather than replaying the record: a database never makes a build slower than none (issue 19)."""
    selected = json.loads((tiny_db / "manifest.json").read_text())["results"]["tasks_selected"]
    db = tmp_path / "defaults"
    res = run_cli("-q", "--json", "tune", tiny_int8, "--trials", selected, *QUICK, "--out", db)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["manifest"]["results"]
    assert r["default_schedules_measured"] == selected == r["trials"]
    out = tmp_path / "lib"
    res = cli("-q", "build", tiny_int8, "--database", db, "--out", out)
    assert res.exit_code == 0, res.output
    tuning = json.loads((out / "metadata.json").read_text())["tuning"]
    assert tuning["kernels_kept_default_schedule"] >= selected
    assert tuning["kernels_where_schedule_failed"] == 0
