"""The fleet: a real TVM RPC tracker and server on 127.0.0.1, tuning through them, then stopped."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ..conftest import cli, needs_nvcc
from ..stages.test_tune import QUICK, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def fleet(tmp_path):
    port = _free_port()
    res = cli("--workdir", tmp_path, "--json", "fleet", "up", "--port", port, "--server", "loopback-board")
    assert res.exit_code == 0, res.output
    state = json.loads(res.stdout)
    yield tmp_path, state
    if (tmp_path / "fleet" / "fleet.json").exists():
        cli("--workdir", tmp_path, "fleet", "down")


def test_fleet_up_status_down(fleet):
    workdir, state = fleet
    assert state["tracker"].startswith("127.0.0.1:") and state["registered"] == {"loopback-board": 1}
    res = cli("--workdir", workdir, "fleet", "status")
    assert res.exit_code == 0 and "loopback-board (1 free)" in res.stdout
    res = cli("--workdir", workdir, "fleet", "down")
    assert res.exit_code == 0 and "stopped 2 process(es)" in res.stdout
    for pid in state["pids"]:
        with pytest.raises(OSError):
            os.kill(pid, 0)
    res = cli("fleet", "status", "--tracker", state["tracker"])
    assert res.exit_code == 3 and "cannot reach the RPC tracker" in res.stderr


def test_tune_through_the_tracker(fleet, tiny_int8, tmp_path):
    workdir, state = fleet
    db = tmp_path / "db"
    res = run_cli("-q", "--json", "tune", tiny_int8, "--tracker", state["tracker"], "--key", "loopback-board",
                  "--trials", "8", *QUICK, "--out", db)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["manifest"]
    assert m["config"]["runner"] == f"rpc {state['tracker']} key loopback-board"
    records = [json.loads(line) for line in (db / "database_tuning_record.json").read_text().splitlines()]
    assert len(records) == 8
    measured = [r for r in records if r[1][1] and min(r[1][1]) < 1e9]  # run_secs of a valid measurement
    assert measured, "no candidate was measured through the RPC server"


def test_unreachable_tracker_and_unknown_key(fleet, tiny_int8, tmp_path):
    workdir, state = fleet
    res = cli("tune", tiny_int8, "--tracker", f"127.0.0.1:{_free_port()}", "--out", tmp_path / "a")
    assert res.exit_code == 3 and "cannot reach the RPC tracker" in res.stderr
    res = cli("tune", tiny_int8, "--tracker", state["tracker"], "--key", "rpi9", "--out", tmp_path / "b")
    assert res.exit_code == 3 and "no board registered under key 'rpi9'" in res.stderr and "loopback-board" in res.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_tracker_address(tiny_int8, tmp_path):
    res = cli("tune", tiny_int8, "--tracker", "nonsense", "--out", tmp_path / "a")
    assert res.exit_code == 3 and "HOST:PORT" in res.stderr


def test_bench_through_the_tracker(fleet, int8_lib, tmp_path):
    """The library runs on the 'board' through RPC (Relax VM: set_input + invoke_stateful), gives the
    same output as a local run, and is timed there; baselines are reported as skipped, with why."""
    import numpy as np

    from squeezeedge import runtime
    from squeezeedge.runtime import random_inputs
    from squeezeedge.measure.remote import remote_runners

    workdir, state = fleet
    out = tmp_path / "rpc.json"
    res = cli("bench", int8_lib, "--tracker", state["tracker"], "--key", "loopback-board", "--repeat", 10,
              "--warmup", 1, "--out", out)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    lib, *rest = rep["runtimes"]
    assert rep["device"] == {"mode": "rpc", "tracker": state["tracker"], "key": "loopback-board",
                             "label": "loopback-board"}
    assert lib["status"] == "ok" and lib["stats"]["n"] == 10 and lib["stats"]["median_ms"] > 0
    assert rest and all(r["status"] == "skipped" and "on the board" in r["reason"] for r in rest)
    feed = random_inputs(30528, 2, 1, 32, seed=5)
    (remote,) = remote_runners([int8_lib], state["tracker"], "loopback-board", feed)
    np.testing.assert_array_equal(remote.fn(feed), runtime.load(int8_lib)(**feed)[0])


def _records(db) -> list:
    path = db / "database_tuning_record.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _tune_in_background(tiny_int8, state, key, db, trials):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "squeezeedge", "-q", "--json", "tune", str(tiny_int8), "--tracker",
                             state["tracker"], "--key", key, "--trials", str(trials), "--per-iteration", "4",
                             "--population", "32", "--out", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_records(db, n, proc, timeout=600):
    import time

    deadline = time.time() + timeout
    while len(_records(db)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "tuning made no progress"
        time.sleep(1)


def test_a_board_dropping_mid_tune_leaves_the_run_going(tiny_int8, tmp_path):
    """Two boards under one key; one is killed mid-run: the run finishes every trial on the other."""
    import signal

    res = cli("--workdir", tmp_path, "--json", "fleet", "up", "--port", _free_port(), "--server", "pair",
              "--server", "pair")
    assert res.exit_code == 0, res.output
    state = json.loads(res.stdout)
    try:
        db = tmp_path / "db"
        proc = _tune_in_background(tiny_int8, state, "pair", db, 12)
        _wait_for_records(db, 4, proc)
        os.killpg(state["pids"][1], signal.SIGKILL)  # the first board, mid-run
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        records = _records(db)
        # the default schedules measured first count as trials; a seed lost with the board leaves a
        # remainder that MetaSchedule fills in whole batches of --per-iteration (4 here)
        assert 12 <= len(records) < 12 + 4 and json.loads(out)["manifest"]["results"]["trials"] == len(records)
        assert any(min(r[1][1]) < 1e9 for r in records[4:]), "nothing was measured after the board dropped"
    finally:
        cli("--workdir", tmp_path, "fleet", "down")


def test_tune_stops_cleanly_when_every_board_drops(fleet, tiny_int8, tmp_path):
    """The only board is killed mid-run: one line, exit 14, and the database is intact and resumable."""
    import signal

    workdir, state = fleet
    db = tmp_path / "db"
    proc = _tune_in_background(tiny_int8, state, "loopback-board", db, 400)
    _wait_for_records(db, 4, proc)
    os.killpg(state["pids"][1], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 14, err
    assert err.strip().count("\n") == 0 and "no board left under key 'loopback-board'" in err
    assert "Traceback" not in err and not (db / "manifest.json").exists()
    kept = len(_records(db))  # every line parses
    assert 4 <= kept < 400
    # resumable: the same database, finished here without a board, keeps every record
    res = run_cli("-q", "--json", "tune", tiny_int8, "--trials", kept, *QUICK, "--out", db)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["manifest"]["results"]["trials"] == kept


def test_tune_for_the_pi5_on_an_emulated_board(tiny_int8_s8, tmp_path):
    """'fleet up --emulated rpi5': an aarch64 board under qemu. Tuning for the Pi 5 through it builds
    aarch64 candidates with the cross g++, measures them under qemu, tensorizes onto sdot, and build
    applies the database (checked under qemu against onnxruntime)."""
    res = cli("--workdir", tmp_path, "--json", "fleet", "up", "--port", _free_port(), "--emulated", "rpi5")
    assert res.exit_code == 0, res.output
    state = json.loads(res.stdout)
    try:
        assert state["registered"] == {"rpi5": 1}
        db = tmp_path / "db"
        res = run_cli("-q", "--json", "tune", tiny_int8_s8, "--target", "rpi5", "--tracker", state["tracker"],
                      "--trials", "8", "--per-iteration", "2", "--population", "32", "--out", db)
        assert res.returncode == 0, res.stderr
        r = json.loads(res.stdout)["manifest"]["results"]
        assert r["trials"] == 8 and r["tuned_tasks"] >= 1 and r["tensorized_tasks"] >= 1
        assert any(min(rec[1][1]) < 1e9 for rec in _records(db)), "nothing was measured on the emulated board"
        lib = tmp_path / "lib"
        res = cli("-q", "build", tiny_int8_s8, "--target", "rpi5", "--database", db, "--out", lib)
        assert res.exit_code == 0, res.output
        meta = json.loads((lib / "metadata.json").read_text())
        # every kernel with a record took it or, where its best record is its default schedule (measured
        # first by tune, all 8 trials here), kept its own default
        assert meta["tuning"]["kernels_with_tuned_schedule"] + meta["tuning"]["kernels_kept_default_schedule"] >= 1
        assert meta["tuning"]["kernels_where_schedule_failed"] == 0
        assert meta["validation"]["ran"].startswith("under qemu-user")
    finally:
        cli("--workdir", tmp_path, "fleet", "down")


@needs_nvcc
def test_bench_runs_a_cuda_library_on_the_boards_gpu(tiny_export, tmp_path, monkeypatch):
    """A board with a GPU (an x86 one here: a user's board file) behind the tracker: the bench asks the
    board's CUDA device for the CUDA library, not its CPU; so does squeezeedge.runtime.load in this process.
    The loopback server has TVM's CUDA plugin loaded over the libcuda stub, so the board's CUDA runtime
    answers that there is no driver, in one line."""
    from squeezeedge import runtime
    from squeezeedge.deploy.cuda import enable_nvcc_codegen
    from squeezeedge.errors import ArtifactError
    from squeezeedge.resources import TARGETS_ENV

    env = enable_nvcc_codegen()
    jetson = (Path(__file__).resolve().parents[2] / "targets" / "jetson-orin-nano.toml").read_text()
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "gpu-x86.toml").write_text(
        jetson.replace('name = "jetson-orin-nano"', 'name = "gpu-x86"').replace('"aarch64-linux-gnu"', '""', 1)
        .replace('mtriple = "aarch64-linux-gnu"\nmcpu = "cortex-a78"\nmattr = ["+neon", "+dotprod"]',
                 'mtriple = "x86_64-linux-gnu"\nmcpu = "haswell"'))
    monkeypatch.setenv(TARGETS_ENV, str(boards))
    lib = tmp_path / "lib"
    res = cli("build", tiny_export, "--target", "gpu-x86", "--out", lib)
    assert res.exit_code == 0 and "(not run: no GPU here)" in res.output and "run natively" in res.output, res.output
    with pytest.raises(ArtifactError, match="cannot load CUDA library .*CUDA Runtime Error"):
        runtime.load(lib)  # in this process too the CUDA device is asked (the plugin is loaded over the stub)
    monkeypatch.setenv("LD_LIBRARY_PATH", ":".join(str(Path(env[k]).parent) for k in ("stub", "cudart")))
    port = _free_port()
    res = cli("--workdir", tmp_path, "--json", "fleet", "up", "--port", port, "--server", "gpu-board")
    assert res.exit_code == 0, res.output
    try:
        res = cli("bench", lib, "--tracker", f"127.0.0.1:{port}", "--key", "gpu-board", "--repeat", 3,
                  "--out", tmp_path / "r.json")
    finally:
        cli("--workdir", tmp_path, "fleet", "down")
    assert res.exit_code == 5 and "cannot load" in res.stderr and "on its GPU: CUDA" in res.stderr, res.output
    assert "Traceback" not in res.output
