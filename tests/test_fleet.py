"""The fleet: a real TVM RPC tracker and server on 127.0.0.1, tuning through them, then stopped."""

from __future__ import annotations

import json
import os
import socket

import pytest

from .conftest import cli
from .test_tune import QUICK, run_cli


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

    from compiler import runtime
    from compiler.export import random_inputs
    from compiler.remote import remote_runners

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
