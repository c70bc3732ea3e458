"""Atomic, locked, skip-if-unchanged artifact writes."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from squeezeedge.artifact import load_artifact, run_stage
from squeezeedge.errors import ArtifactError, OutputError


def _work(tmp):
    (tmp / "a.txt").write_text("hello")
    return {"n": 1}


def test_failed_work_leaves_nothing(tmp_path):
    out = tmp_path / "out"

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        run_stage("demo", out, {"k": 1}, boom)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_failed_rerun_keeps_previous_artifact(tmp_path):
    out = tmp_path / "out"
    first = run_stage("demo", out, {"k": 1}, _work).artifact

    def boom(tmp):
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        run_stage("demo", out, {"k": 2}, boom)
    assert load_artifact(out).sha256 == first.sha256


def test_skip_only_when_config_and_parent_match(tmp_path):
    out = tmp_path / "out"
    assert not run_stage("demo", out, {"k": 1}, _work).skipped
    assert run_stage("demo", out, {"k": 1}, _work).skipped
    assert not run_stage("demo", out, {"k": 2}, _work).skipped
    assert not run_stage("demo", out, {"k": 2}, _work, force=True).skipped


def test_stage_mismatch(tmp_path):
    run_stage("demo", tmp_path / "out", {}, _work)
    with pytest.raises(ArtifactError, match="is a 'demo' artifact, expected a 'export' artifact"):
        load_artifact(tmp_path / "out", stage="export")


def _hold(out, ready, release):
    def slow(tmp):
        ready.set()  # the lock is held from here until the parent has tried to write
        release.wait(60)
        return {}

    run_stage("demo", out, {}, slow)


def test_second_writer_is_refused_while_first_runs(tmp_path):
    out = tmp_path / "out"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(out, ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OutputError, match="another squeezeedge run is writing"):
            run_stage("demo", out, {"other": 1}, _work)
    finally:
        release.set()
        proc.join(30)
    assert proc.exitcode == 0
    assert load_artifact(out).stage == "demo"
