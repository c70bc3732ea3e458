"""squeezeedge pipeline: the tiny example (host + rpi5) end to end, a rerun from cache, a failing target
named while the others finish, and bad pipeline files as one-line errors."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import jsonschema
import pytest

from squeezeedge.measure.bench import SCHEMA_FILE
from squeezeedge.resources import TARGETS_ENV

from .conftest import cli, needs_nvcc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "out"
    res = cli("--json", "pipeline", EXAMPLES / "pipeline-tiny.toml", "--out", out)
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_tiny_pipeline_builds_bundles_benches_and_reports(tiny_run):
    out, summary = tiny_run
    assert summary["ok"] and summary["failed"] == {}
    done = {(s["stage"], s["target"]) for s in summary["steps"] if s["status"] == "done"}
    # export once; host (u8 activations) and rpi5 (s8 for sdot) have distinct int8 presets: two quantizes
    assert {("export", None), ("quantize", "host"), ("quantize", "rpi5"), ("build", "host"), ("build", "rpi5")} <= done
    for name in ("host-int8", "rpi5-int8"):
        with tarfile.open(out / f"{name}.tar.gz") as tar:
            assert any(m.name.endswith("model.so") for m in tar.getmembers())
    bench = json.loads((out / "bench.json").read_text())
    jsonschema.validate(bench, json.loads(SCHEMA_FILE.read_text()))
    names = [r["name"] for r in bench["runtimes"]]
    assert "squeezeedge int8 (host)" in names and not any("rpi5" in n for n in names)  # emulated kept apart
    counts = json.loads((out / "emulated.json").read_text())  # rpi5: counted on its core, never timed
    assert summary["bench"]["emulated"] == str(out / "emulated.json") and counts["emulated"] is True
    (board,) = counts["boards"]
    assert board["target"] == "rpi5" and board["core"] == "cortex-a76" and board["floor"]["macs_per_instruction"] == 16
    lib, *peers = board["rows"]
    assert lib["name"] == "squeezeedge int8 (rpi5)" and set(lib["lengths"]) == {"16", "32"} and lib["text_mean"] > 0
    # baselines = ort; the Pi 5 preset's s8 activations, and onnxruntime's default u8 as well
    assert {p["name"] for p in peers} == {"onnxruntime fp32", "onnxruntime int8 (its own recipe)",
                                          "onnxruntime int8 (its own recipe, u8 activations)"}
    report = (out / "report" / "report.md").read_text()
    assert "Board squeezeedge int8 (rpi5) on cortex-a76: instructions per inference (emulated)" in report
    md = (out / "pipeline.md").read_text()
    assert "instructions per inference counted on each target's core" in md and "median ms" not in md


def test_ci_gate_refuses_a_10_percent_rise_in_the_rpi5_librarys_instructions(tiny_run):
    """The last report's counts are 11% (then 9%) below this run's: --fail-on instructions:10% exits 13
    naming the rpi5 library and the length, then passes."""
    work, _ = tiny_run  # every stage is cached: only the report runs again (history is removed after)
    now = json.loads((work / "emulated.json").read_text())
    try:
        _gate(work, now)
    finally:
        shutil.rmtree(work / "history", ignore_errors=True)


def _gate(work: Path, now: dict) -> None:
    for drop, code in ((1.11, 13), (1.09, 0)):
        before = json.loads(json.dumps(now))
        lib = before["boards"][0]["rows"][0]
        lib["lengths"] = {k: int(v / drop) for k, v in lib["lengths"].items()}
        lib["text_mean"] /= drop
        before["created"] = "2000-01-01T00:00:00Z"
        shutil.rmtree(work / "history", ignore_errors=True)
        (work / "history").mkdir()
        (work / "history" / "emulated-before.json").write_text(json.dumps(before))
        res = cli("pipeline", EXAMPLES / "pipeline-tiny.toml", "--out", work, "--fail-on", "instructions:10%")
        assert res.exit_code == code, res.output
        if code:
            assert "squeezeedge int8 (rpi5) on cortex-a76" in res.stderr and "at 16 tokens" in res.stderr


def test_rerun_with_nothing_changed_skips_every_stage(tiny_run):
    """Every stage says skipped (the outcome; not a wall-clock bound, which a loaded CI machine breaks)."""
    out, _ = tiny_run
    res = cli("--json", "pipeline", EXAMPLES / "pipeline-tiny.toml", "--out", out)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {s["status"] for s in summary["steps"] if s["stage"] != "report"} == {"skipped"}, summary["steps"]


def test_report_names_the_target_of_each_library_when_a_run_has_several(tiny_run):
    """Two int8 libraries in one run (the boards pipeline's x86-avx2 and x86-avx512): each real-text ratio
    names its target; with one library the short name stays."""
    import copy

    from squeezeedge.measure.report import sections

    out, _ = tiny_run
    run = json.loads((out / "bench.json").read_text())
    run["_file"] = str(out / "bench.json")

    def ratios(r):
        return next(text for title, text, _ in sections([r]) if "real text" in title).split("faster): ")[1]

    assert ratios(run).startswith("squeezeedge int8 / ")
    two = copy.deepcopy(run)
    rows = two["workloads"]["text"]["rows"]
    rows.append(dict(rows[0], name="squeezeedge int8 (rpi5)", mean_ms_per_text=2 * rows[0]["mean_ms_per_text"]))
    text = ratios(two)
    assert "squeezeedge int8 (host) / " in text and "squeezeedge int8 (rpi5) / " in text, text


def test_a_failing_target_is_named_and_the_others_finish(tiny_run, tmp_path, monkeypatch):
    """A user's board whose cross compiler is not installed (riscv64): its build fails, host's still
    builds and is benched, the exit code is 15 and the message names the board."""
    out, _ = tiny_run
    boards = tmp_path / "boards"
    boards.mkdir()
    rpi5 = (Path(__file__).resolve().parent.parent / "targets" / "rpi5.toml").read_text()
    (boards / "riscv-board.toml").write_text(
        rpi5.replace('name = "rpi5"', 'name = "riscv-board"').replace("aarch64-linux-gnu", "riscv64-linux-gnu")
        .replace('mcpu = "cortex-a76"', 'mcpu = "generic-rv64"').replace('mattr = ["+neon", "+dotprod"]', ""))
    monkeypatch.setenv(TARGETS_ENV, str(boards))
    cfg = tmp_path / "p.toml"
    cfg.write_text((EXAMPLES / "pipeline-tiny.toml").read_text().replace('targets = ["host", "rpi5"]',
                                                                          'targets = ["host", "riscv-board"]'))
    work = tmp_path / "out"
    shutil.copytree(out / "export", work / "export")  # the export is cached (same config)
    res = cli("pipeline", cfg, "--out", work)
    assert res.exit_code == 15, res.output
    assert "riscv-board" in res.stderr and "build" in res.stderr
    summary = json.loads((work / "pipeline.json").read_text())
    assert set(summary["failed"]) == {"riscv-board"}
    assert (work / "host-int8" / "model.so").is_file() and (work / "bench.json").is_file()


@needs_nvcc
def test_jetson_target_is_built_bundled_and_said_not_timed_here(tiny_run, tmp_path):
    """A Jetson target in a pipeline: its CUDA library and CPU library are built and bundled (the bundle's
    expected output from the CPU library under qemu), the run succeeds, and the summary says why it was
    not timed here."""
    out, _ = tiny_run
    cfg = tmp_path / "p.toml"
    cfg.write_text((EXAMPLES / "pipeline-tiny.toml").read_text().replace('targets = ["host", "rpi5"]',
                                                                          'targets = ["jetson-orin-nano"]'))
    work = tmp_path / "out"
    shutil.copytree(out / "export", work / "export")  # the export is cached (same config)
    res = cli("--json", "pipeline", cfg, "--out", work)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {(s["stage"], s["status"]) for s in summary["steps"] if s["stage"] in ("quantize", "build")} \
        == {("quantize", "done"), ("build", "done")}
    with tarfile.open(work / "jetson-orin-nano-int8.tar.gz") as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
    assert {"model.so", "model-cpu.so", "lib/libtvm_runtime_cuda.so", "inputs/expected_output.bin"} <= names
    (row,) = summary["bench"]["not_run"]
    assert row["target"] == "jetson-orin-nano" and "no GPU here" in row["why"]


@pytest.mark.parametrize("text, code, words", [
    ('targets = ["host"]\n[model]\nsequence = 3\n', 3, "unknown key 'sequence' in [model]"),
    ('targets = ["host"]\n[model]\nseq_len = "long"\n', 3, "[model] seq_len: 'long' is not an integer"),
    ('[model]\nseq_len = 32\n', 3, "no 'targets'"),
    ('targets = ["no-such-board"]\n', 4, "unknown target 'no-such-board'"),
    ('targets = ["host"]\nprecisions = ["int4"]\n', 3, "unknown precision 'int4'"),
    # a quantize value is checked with the file, as the command line checks it, before any stage runs
    ('targets = ["host"]\n[quantize]\nmethod = "bogus"\n', 3, "[quantize] method 'bogus' (minmax, entropy, percentile)"),
    ('targets = ["host"]\n[quantize]\nsmooth_quant = 1.5\n', 3, "smooth_quant must be between 0 and 1"),
    ('targets = ["host"]\n[quantize]\nnum_samples = 0\n', 3, "num_samples must be >= 1"),
    ('targets = ["host"]\n[quantize]\nmin_agreement = "high"\n', 3, "'high' is not a number"),
])
def test_bad_pipeline_file_is_a_one_line_error(tmp_path, text, code, words):
    cfg = tmp_path / "p.toml"
    cfg.write_text(text)
    res = cli("pipeline", cfg, "--out", tmp_path / "out")
    assert res.exit_code == code, res.output
    assert words in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()  # a pipeline that cannot start leaves no --out behind


def test_a_pipeline_file_sets_every_quantize_option(tmp_path):
    """Each of quantize's options, set in [quantize], reaches the stage as the value the file gave: the
    file's keys, their checks and the arguments passed on all come from QuantizeConfig's declaration."""
    from squeezeedge.cli import main
    from squeezeedge.options import file_keys, from_cli
    from squeezeedge.pipeline import _quantize_args, load_config
    from squeezeedge.stages.quantize import QuantizeConfig

    corpus = tmp_path / "texts.jsonl"
    corpus.write_text('{"body": "a sentence"}\n')
    given = {"calibration_data": "texts.jsonl", "text_column": "body", "num_samples": 32, "num_heldout": 16,
             "method": "percentile", "per_channel": False, "activations": "int8", "keep_float": ["gelu-out"],
             "float_outputs": "none", "smooth_quant": 0.5, "int8_embeddings": False, "fallback": False,
             "seed": 7, "min_cosine": 0.95, "min_agreement": 0.8}
    assert set(given) == set(file_keys(QuantizeConfig))  # every option the stage has
    toml = "".join(f"{k} = {json.dumps(v)}\n" for k, v in given.items()).replace("false", "false")
    (tmp_path / "p.toml").write_text('targets = ["host"]\n[quantize]\n' + toml)
    args = [str(a) for a in _quantize_args(load_config(tmp_path / "p.toml"), Path("E"), "rpi5", Path("Q"))]
    params = main.commands["quantize"].make_context("quantize", args[1:]).params
    cfg = from_cli(QuantizeConfig, params, target=params["target"], target_file=None)
    want = QuantizeConfig(calibration_data=corpus, text_column="body", num_samples=32, num_heldout=16,
                          method="percentile", per_channel=False, activations="int8", keep_float=("gelu-out",),
                          float_outputs=(), smooth_quant=0.5, int8_embeddings=False, fallback=False, seed=7,
                          min_cosine=0.95, min_agreement=0.8, target="rpi5")
    assert cfg == want


def test_ci_workflow_runs_the_commands_the_readme_documents():
    """Every shell step of examples/ci/ is in README.md verbatim, and its pipeline file and flags exist."""
    import re

    workflow = (EXAMPLES / "ci" / "squeezeedge-boards.yml").read_text()
    readme = (EXAMPLES.parent / "README.md").read_text()
    runs = re.findall(r"^\s+run: (.+)$", workflow, re.M)
    assert len(runs) == 3 and any("squeezeedge pipeline" in r for r in runs)
    for cmd in runs:
        assert f"    {cmd}\n" in readme, f"README.md does not document: {cmd}"
    pipeline_file = re.search(r"PIPELINE: (\S+)", workflow).group(1)
    assert (EXAMPLES.parent / pipeline_file).is_file()
    for uses in ("actions/cache@", "actions/upload-artifact@", "container: python:3.11-bookworm"):
        assert uses in workflow
    from squeezeedge.pipeline import load_config

    cfg = load_config(EXAMPLES.parent / pipeline_file)  # the boards file parses and names shipped boards
    assert {"rpi4", "rpi5", "jetson-orin-nano", "x86-avx512", "x86-avx2"} <= set(cfg.targets)


@pytest.mark.parametrize("section, command, positional", [
    ("model", "export", []), ("quantize", "quantize", ["E"]), ("build", "build", ["Q"]), ("tuning", "tune", ["Q"]),
    ("bench", "bench", ["L", "--out", "b.json"]),
])
def test_every_option_of_every_stage_round_trips_through_a_pipeline_file(tmp_path, section, command, positional):
    """Each stage's options are declared once: a pipeline section can set each of them (to a value other than
    its default), and the arguments the pipeline passes make the stage's own command parse that value."""
    import dataclasses

    from squeezeedge.cli import main
    from squeezeedge.options import file_keys, from_cli
    from squeezeedge.pipeline import SECTIONS

    cls = SECTIONS[section]
    given = {key: _other_value(f, tmp_path) for key, f in file_keys(cls).items()}
    if section == "model":  # preset or checkpoint, not both (a checkpoint needs a real model directory)
        assert "checkpoint" in given
        del given["checkpoint"]
    (tmp_path / "p.toml").write_text(f'targets = ["host"]\n[{section}]\n'
                                     + "".join(f"{k} = {json.dumps(v)}\n" for k, v in given.items()))
    from squeezeedge.options import to_args
    from squeezeedge.pipeline import load_config

    values = getattr(load_config(tmp_path / "p.toml"), section)
    params = main.commands[command].make_context(command, [*positional, *map(str, to_args(cls, values))]).params
    got = from_cli(cls, params)
    for key, want in given.items():
        f = file_keys(cls)[key]
        want = tmp_path / want if f.metadata["kind"] is Path else tuple(want) if isinstance(want, list) else want
        assert getattr(got, f.name) == want, (key, getattr(got, f.name), want)
        assert getattr(got, f.name) != f.default or dataclasses.MISSING == f.default, key


def _other_value(f, tmp_path):
    """A value of field ``f`` other than its default, as a pipeline file writes it."""
    m = f.metadata
    if m["many"]:
        return [c for c in m["choices"] if c not in (f.default or ())][:1] or [m["choices"][0]]
    if m["choices"]:
        return next(c for c in m["choices"] if c != f.default)
    if m["kind"] is bool:
        return not f.default if f.default is not None else False
    if m["kind"] is int:
        return (f.default or m["low"] or 0) + 3
    if m["kind"] is float:
        low, high = m["low"] or 0.0, m["high"]
        value = (low + high) / 2 if high is not None else (f.default or 1.0) * 3
        return value if value != f.default else low + (high - low) / 4
    if m["kind"] is Path:
        (tmp_path / "given.txt").write_text("a text\n")
        return "given.txt"
    return "given"
