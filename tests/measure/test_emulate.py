"""Counting a board's work with no board: the qemu counting plugin, `bench --emulate` on a tiny Pi 5
library beside onnxruntime and LiteRT's aarch64 wheels, an independent count from the bundle, and the
bundle's side-by-side with onnxruntime run under qemu by the board's Python."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from squeezeedge.deploy import board_python
from squeezeedge.deploy.bundle import safe_extract
from squeezeedge.measure import count_check
from squeezeedge.measure.emulate import multiply_adds

from ..conftest import TINY_SEQ, cli

LOOP = r"""
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>
int main(int argc, char** argv) {
  long n = atol(argv[1]);
  syscall(0x5345, 0L);
  __asm__ volatile("1: subs %0, %0, #1\n b.ne 1b" : "+r"(n) : : "cc");
  syscall(0x5345, 1L);
  return 0;
}
"""


def _count_loop(tmp_path: Path, n: int) -> int:
    exe = tmp_path / "loop"
    if not exe.is_file():
        (tmp_path / "loop.c").write_text(LOOP)
        subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-o", str(exe), str(tmp_path / "loop.c")], check=True)
    log = tmp_path / f"count-{n}.log"
    subprocess.run(["qemu-aarch64", "-cpu", "cortex-a72", "-plugin", str(board_python.plugin()), "-d", "plugin",
                    "-D", str(log), "-L", "/usr/aarch64-linux-gnu", str(exe), str(n)], check=True)
    from squeezeedge.measure.emulate import parse_marks

    return parse_marks(log, 1)[0]


def test_counter_counts_exactly_the_instructions_between_two_markers(tmp_path):
    """A loop of 2 instructions an iteration: 1000 more iterations are exactly 2000 more instructions."""
    a, b = _count_loop(tmp_path, 1000), _count_loop(tmp_path, 2000)
    assert b - a == 2000 and 2000 < a < 2200, (a, b)


@pytest.fixture(scope="module")
def emulated(cross_libs, tmp_path_factory):
    out = tmp_path_factory.mktemp("emulate") / "count.json"
    lib = cross_libs[("rpi5", "int8")]
    res = cli("-q", "--workdir", out.parent / "work", "bench", lib, "--emulate", "--out", out)
    assert res.exit_code == 0, res.output
    return lib, json.loads(out.read_text()), out


def test_bench_emulate_counts_the_library_and_its_peers_on_the_pi5_core(emulated, tiny_export):
    lib, run, _ = emulated
    (board,) = run["boards"]
    assert run["emulated"] is True and board["core"] == "cortex-a76" and board["target"] == "rpi5"
    rows = {r["name"]: r for r in board["rows"]}
    assert set(rows) == {"squeezeedge int8 (rpi5)", "onnxruntime fp32", "onnxruntime int8 (its own recipe)",
                         "tflite fp32 (LiteRT)", "tflite int8 (LiteRT)"}
    for r in rows.values():  # static library: its one length; every peer ran it on the same core
        assert set(r["lengths"]) == {str(TINY_SEQ)} and r["lengths"][str(TINY_SEQ)] > 10_000, r
    macs = multiply_adds(tiny_export, [TINY_SEQ])[TINY_SEQ]
    assert board["floor"]["macs"] == {str(TINY_SEQ): macs} and board["floor"]["macs_per_instruction"] == 16
    assert rows["squeezeedge int8 (rpi5)"]["lengths"][str(TINY_SEQ)] > macs / 16  # never under the floor


def test_library_count_agrees_with_the_bundles_runner_3_runs_minus_1(emulated):
    """The independent count: the bundle's runner without markers, (3 runs - 1 run) / 2, within 1%."""
    lib, run, path = emulated
    tarball = lib.with_name(lib.name + ".tar.gz")
    got = count_check.per_inference(tarball, "cortex-a76", TINY_SEQ)
    want = run["boards"][0]["rows"][0]["lengths"][str(TINY_SEQ)]
    assert abs(got - want) / want <= 0.01, (got, want)


def test_report_shows_the_boards_section_apart_from_timings(emulated, tmp_path):
    _, _, path = emulated
    res = cli("report", path, "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Board squeezeedge int8 (rpi5) on cortex-a76: instructions per inference (emulated)" in md
    assert "squeezeedge int8 / onnxruntime int8 (its own recipe)" in md and "Not a latency" in md
    assert "median ms" not in md


@pytest.mark.parametrize("spec, words", [("instructions:x%", "instructions:P%"), ("seconds:5%", "median:P%")])
def test_bad_fail_on_is_a_one_line_error(emulated, tmp_path, spec, words):
    res = cli("report", emulated[2], "--out", tmp_path / "r", "--fail-on", spec)
    assert res.exit_code != 0 and words in res.stderr and "Traceback" not in res.output


def test_emulate_refuses_an_x86_library(int8_lib, tmp_path):
    res = cli("bench", int8_lib, "--emulate", "--out", tmp_path / "x.json")
    assert res.exit_code != 0 and "--emulate counts aarch64 libraries" in res.stderr


def test_bundle_times_the_library_beside_onnxruntime_under_qemu(cross_libs, tiny_int8, tmp_path):
    """`./run.sh --vs-onnxruntime MODEL.onnx` on a Pi 5 bundle, run as on the board: python3 is the board's
    aarch64 CPython with onnxruntime's aarch64 wheel, the runner under qemu (SE_EMULATOR)."""
    tarball = cross_libs[("rpi5", "int8")].with_name("int8-rpi5.tar.gz")
    safe_extract(tarball, tmp_path)
    root = tmp_path / "int8-rpi5"
    cmd, env = board_python.python_command("cortex-a76")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").write_text("#!/bin/sh\nexec " + " ".join(cmd) + ' "$@"\n')
    (bindir / "python3").chmod(0o755)
    env = env | {"PATH": f"{bindir}:{os.environ['PATH']}", "SE_EMULATOR": "qemu-aarch64 -cpu cortex-a76 -L "
                 "/usr/aarch64-linux-gnu"}
    res = subprocess.run(["sh", str(root / "run.sh"), "--vs-onnxruntime", str(tiny_int8 / "model.onnx"), "3"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "squeezeedge int8 (rpi5): median" in res.stdout and "onnxruntime 1.32.0 (model.onnx): median" in res.stdout
    cosine = float(res.stdout.split("output cosine ")[1].split()[0])
    assert cosine > 0.99 and "ratio (library / onnxruntime)" in res.stdout
    readme = (root / "README.md").read_text()
    assert "./run.sh --vs-onnxruntime MODEL.onnx" in readme and str(tiny_int8 / "model.onnx") in readme


def test_readme_latency_table_is_the_recorded_run():
    """README.md's x86 latency table is results/bench-x86-avx512.json's, as the report renders it (not typed)."""
    from squeezeedge.measure.report import _md, summary_table

    root = Path(__file__).resolve().parents[2]
    run = json.loads((root / "results" / "bench-x86-avx512.json").read_text())
    assert _md(summary_table(run)) in (root / "README.md").read_text()


def test_readme_boards_table_is_the_recorded_run():
    """README.md's boards table is results/boards-emulated.json's, as the report renders it (not typed)."""
    from squeezeedge.measure.board_report import summary_table
    from squeezeedge.measure.report import _md

    root = Path(__file__).resolve().parents[2]
    run = json.loads((root / "results" / "boards-emulated.json").read_text())
    assert _md(summary_table(run)) in (root / "README.md").read_text()
