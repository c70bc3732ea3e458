"""Interruption, concurrency, untrusted input and load: real processes killed with SIGKILL, two
processes on one output, fuzzed readers and target files, and 1,000 back-to-back inferences."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from squeezeedge.artifact import load_artifact
from squeezeedge.stages.calibdata import read_texts
from squeezeedge.errors import CalibrationError, TargetError
from squeezeedge.targets import parse_target

from .conftest import FAST_Q, TINY_SEQ, cli

REPO = Path(__file__).resolve().parent.parent


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "squeezeedge", "-q", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(pattern_dir: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(pattern_dir.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} appeared in {timeout} s")


@pytest.fixture()
def good_copies(tiny_export, tiny_int8, tmp_path):
    """Private copies of good export and int8 artifacts (the session ones stay untouched)."""
    import shutil

    exp, q = tmp_path / "export", tmp_path / "int8"
    shutil.copytree(tiny_export, exp)
    shutil.copytree(tiny_int8, q)
    return exp, q


STAGES = {
    "export": lambda exp, q, out: ["export", "--model", "squeezebert-tiny", "--seq-len", TINY_SEQ, "--force",
                                   "--out", out],
    "quantize": lambda exp, q, out: ["quantize", exp, *FAST_Q, "--force", "--out", out],
    "build": lambda exp, q, out: ["build", q, "--force", "--out", out],
}


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_mid_stage_keeps_the_previous_artifact(stage, good_copies, tmp_path):
    exp, q = good_copies
    out = {"export": exp, "quantize": q, "build": tmp_path / "lib"}[stage]
    if stage == "build":
        assert cli("-q", "build", q, "--out", out).exit_code == 0
    before = load_artifact(out).manifest["artifact_sha256"]
    proc = _start(*STAGES[stage](exp, q, out))
    _wait_for(out.parent, f".{out.name}.tmp-*", proc)  # the rewrite has started writing
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert load_artifact(out, verify=True).manifest["artifact_sha256"] == before  # intact, every sha256 checked
    res = cli("-q", *STAGES[stage](exp, q, out))  # the next run redoes it cleanly
    assert res.exit_code == 0, res.output
    load_artifact(out, verify=True)
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "stale temp directory left behind"


def test_kill_between_the_two_renames_is_recovered(good_copies):
    """The one window where 'out' does not exist: the old artifact sits in .NAME.old-*/a. The next run
    under the lock puts it back before deciding anything."""
    exp, _ = good_copies
    before = load_artifact(exp).manifest["artifact_sha256"]
    hold = exp.parent / f".{exp.name}.old-killed"
    hold.mkdir()
    os.rename(exp, hold / "a")
    res = cli("export", "--model", "squeezebert-tiny", "--seq-len", TINY_SEQ, "--out", exp)
    assert res.exit_code == 0 and "skipped" in res.stdout, res.output  # recovered, and it is still current
    assert load_artifact(exp).manifest["artifact_sha256"] == before and not hold.exists()


def test_two_processes_on_one_output(good_copies):
    """The second run is refused with a clear message while the first holds the lock; the first finishes."""
    exp, q = good_copies
    first = _start("quantize", exp, *FAST_Q, "--force", "--out", q)
    _wait_for(q.parent, f".{q.name}.tmp-*", first)
    second = subprocess.run([sys.executable, "-m", "squeezeedge", "quantize", str(exp), *FAST_Q, "--force",
                             "--out", str(q)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 7 and "another squeezeedge run is writing" in second.stderr
    assert first.wait(300) == 0, first.communicate()
    load_artifact(q, verify=True)


# --- untrusted text: fuzzed calibration files and target files -----------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".tsv"]),
       column=st.sampled_from([None, "text", "review"]))
@example(data=b"\r\x01", suffix=".csv", column=None)  # a bare CR in the header row (csv.Error there)
def test_calibration_readers_never_crash(tmp_path, data, suffix, column):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        corpus = read_texts(path, column if suffix != ".txt" else None)
    except CalibrationError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert corpus.texts and all(t == t.strip() and t for t in corpus.texts)


TOML_PIECES = st.sampled_from([
    'name = "b"\n', 'description = "d"\n', 'device = "cpu"\n', 'device = "tpu"\n', "threads = 2\n",
    'threads = "2"\n', 'rpc_key = "k"\n', 'cross_triple = ""\n', "[tvm]\n", 'kind = "llvm"\n', 'mcpu = "detect"\n',
    'mcpu = "cortex-z99"\n', "[int8]\n", 'activations = "uint8"\n', 'weights = "int8"\n', "per_channel = true\n",
    'reason = "r"\n', "[tuning]\n", "trials = 10\n", "per_iteration = 4\n", "[[oops]]\n", "= broken\n", "bogus = 1\n",
])


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(TOML_PIECES, max_size=24), noise=st.text(max_size=30))
def test_target_parser_never_crashes(pieces, noise):
    text = "".join(pieces) + noise
    try:
        t = parse_target(text, Path("fuzz.toml"))
    except TargetError as exc:
        assert str(exc).startswith("fuzz.toml") and "\n" not in str(exc).strip()
    else:
        assert t.name and t.device in ("cpu", "cuda")


# --- load: 1,000 back-to-back inferences --------------------------------------------------------------

def _rss_mb(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


# What a leak would cost: the tiny model's hidden state is 32 tokens x 64 x 4 bytes = 8 KiB, so a call that
# kept even one of its activations would add 7 MiB over 900 calls. Measured here without a leak: 0.04 MiB.
LEAK_LIMIT_MB = 4.0


def test_thousand_inferences_do_not_leak(int8_lib):
    """RSS grows by less than LEAK_LIMIT_MB from call 100 to call 1,000 (allocations are reused)."""
    import numpy as np

    from squeezeedge import runtime
    from squeezeedge.runtime import random_inputs

    model = runtime.load(int8_lib)
    feeds = [random_inputs(30528, 2, 1, TINY_SEQ, s) for s in range(10)]
    outs = [model(**feeds[i % 10])[0] for i in range(100)]
    warm = _rss_mb()
    for i in range(900):
        out = model(**feeds[i % 10])[0]
        assert np.isfinite(out).all()
    assert _rss_mb() - warm < LEAK_LIMIT_MB, (warm, _rss_mb())
    np.testing.assert_array_equal(model(**feeds[0])[0], outs[0])  # still the same answers


def test_thousand_inferences_through_rpc_do_not_leak(int8_lib, tmp_path):
    """The same through a real tracker and server: the server's RSS grows by less than LEAK_LIMIT_MB,
    every call succeeds."""
    from squeezeedge.runtime import random_inputs
    from squeezeedge.measure.remote import remote_runners

    res = cli("--workdir", tmp_path, "--json", "fleet", "up", "--port", _free_port(), "--server", "leak-board")
    assert res.exit_code == 0, res.output
    state = json.loads(res.stdout)
    try:
        feed = random_inputs(30528, 2, 1, TINY_SEQ, 3)
        (remote,) = remote_runners([int8_lib], state["tracker"], "leak-board", feed)
        import psutil

        server = psutil.Process(state["pids"][1])  # [tracker, server]; the server forks per session

        def rss():
            return sum(p.memory_info().rss for p in [server, *server.children(recursive=True)]) / 2**20

        first = [remote.fn(feed) for _ in range(100)][-1]
        warm = rss()
        for _ in range(900):
            remote.fn(feed)
        assert rss() - warm < LEAK_LIMIT_MB, (warm, rss())  # measured without a leak: 0.0 MiB
        assert (remote.fn(feed) == first).all()
    finally:
        cli("--workdir", tmp_path, "fleet", "down")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
