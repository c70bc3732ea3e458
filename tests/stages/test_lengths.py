"""Any input length (issue 20): a --dynamic export builds ONE library that takes every length from 1 to
its maximum, padded to length buckets that share one copy of the weights; outputs equal onnxruntime
running the dynamic export at exactly L tokens (no padding). Tiny model, maximum 32: buckets 16 and 32 on AVX-512 (16 lanes), 16, 24, 32 on AVX2, 12, 16, 20, 24, 32 on NEON (and 14 for int8 on aarch64)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from squeezeedge import runtime
from squeezeedge.stages.build import cosine
from squeezeedge.errors import InputError
from squeezeedge.runtime import random_inputs
from squeezeedge.lowering.lengths import bucket_for, buckets, function_name, pad
from squeezeedge.lowering.schedules import vector_lanes
from squeezeedge.stages.quantize import reference_session
from squeezeedge.targets import load_target

from ..conftest import FAST_Q, cli, manifest

MAX = 32
LENGTHS = (1, 12, 13, 16, 17, 25, 32)  # one token, bucket boundaries, one past them (padded to the next), the maximum


def _buckets(target: str) -> list[int]:
    """The buckets a MAX-token any-length library has on ``target``: whole numbers of its vectors."""
    return buckets(MAX, True, vector_lanes(load_target(target).tvm_target()))


def test_buckets_are_powers_of_two_and_their_midpoints_in_whole_vectors_up_to_the_maximum():
    assert buckets(128, dynamic=True, multiple=4) == [12, 16, 20, 24, 32, 36, 40, 48, 64, 96, 128]  # NEON
    assert buckets(128, dynamic=True, multiple=2) == [10, 12, 14, 16, 18, 20, 24, 32, 36, 40, 48, 64, 96,
                                                      128]  # aarch64 int8
    assert buckets(128, dynamic=True, multiple=8) == [16, 24, 32, 40, 48, 64, 96, 128]  # AVX2
    assert buckets(128, dynamic=True, multiple=16) == [16, 32, 48, 64, 96, 128]  # AVX-512
    assert buckets(100, dynamic=True) == [12, 16, 20, 24, 32, 36, 40, 48, 64, 96, 100]
    assert buckets(16, dynamic=True) == [12, 16] and buckets(12, dynamic=True) == [12]
    assert _buckets("rpi5") == [12, 16, 20, 24, MAX] and _buckets("x86-avx512") == [16, MAX]
    assert buckets(128, dynamic=False) == [128]
    assert [bucket_for(n, [16, 32]) for n in (1, 16, 17, 32)] == [16, 16, 32, 32]
    assert function_name(32, [16, 32]) == "main" and function_name(16, [16, 32]) == "main_16"
    with pytest.raises(InputError, match="at most 32"):
        bucket_for(33, [16, 32])
    a = np.arange(6, dtype=np.int64).reshape(1, 6) + 1
    assert pad([a], 8)[0].tolist() == [[1, 2, 3, 4, 5, 6, 0, 0]]


@pytest.fixture(scope="module")
def dyn_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn") / "export"
    res = cli("-q", "export", "--model", "squeezebert-tiny", "--dynamic", "--seq-len", MAX, "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def dyn_int8(dyn_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn") / "int8"
    res = cli("-q", "quantize", dyn_export, *FAST_Q, "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def dyn_libs(dyn_export, dyn_int8, tmp_path_factory):
    root = tmp_path_factory.mktemp("dynlib")
    libs = {}
    for precision, src in (("fp32", dyn_export), ("int8", dyn_int8)):
        res = cli("-q", "build", src, "--target", "host", "--out", root / precision)
        assert res.exit_code == 0, res.output
        libs[precision] = root / precision
    return libs


def _feed(n: int, seed: int = 5) -> dict:
    return random_inputs(30528, 2, 1, n, seed)


def test_one_library_takes_every_length_and_matches_onnxruntime_at_exactly_that_length(dyn_export, dyn_int8, dyn_libs):
    fp32 = runtime.load(dyn_libs["fp32"])
    int8 = runtime.load(dyn_libs["int8"])
    ref32 = ort.InferenceSession(str(dyn_export / "model.onnx"), providers=["CPUExecutionProvider"])
    ref8 = reference_session(dyn_int8 / "model.onnx")
    assert fp32.lengths == _buckets("host") and int8.lengths == _buckets("host")
    for n in LENGTHS:
        feed = _feed(n)
        want = ref32.run(None, feed)[0]
        np.testing.assert_allclose(fp32(**feed)[0], want, atol=1e-4, rtol=0, err_msg=f"fp32 at {n} tokens")
        got8, want8 = int8(**feed)[0].ravel(), ref8.run(None, feed)[0].ravel()
        assert cosine(got8.astype(np.float64), want8.astype(np.float64)) >= 0.99, n
    meta = json.loads((dyn_libs["int8"] / "metadata.json").read_text())
    first = _buckets("host")[0]
    assert meta["lengths"] == _buckets("host") and meta["validation"]["lengths"] == [1, first, first + 1, MAX]


def test_padding_never_changes_an_answer(dyn_libs):
    """A text of 5 tokens, and the same 5 tokens padded by hand to 16 and to 32 with mask 0: same output."""
    model = runtime.load(dyn_libs["fp32"])
    feed = {k: v for k, v in _feed(5).items()}
    feed["attention_mask"][:] = 1
    alone = model(**feed)[0]
    for n in (16, MAX):
        padded = dict(zip(feed, pad(list(feed.values()), n)))
        np.testing.assert_allclose(model(**padded)[0], alone, atol=1e-5, rtol=0)


def test_a_length_over_the_maximum_is_refused_unless_truncation_is_asked(dyn_libs):
    with pytest.raises(InputError, match=f"at most {MAX}"):
        runtime.load(dyn_libs["fp32"])(**_feed(MAX + 1))
    long = _feed(MAX + 7)
    cut = runtime.load(dyn_libs["fp32"], truncate=True)(**long)[0]
    first = runtime.load(dyn_libs["fp32"])(**{k: v[:, :MAX] for k, v in long.items()})[0]
    np.testing.assert_array_equal(cut, first)
    res = cli("profile", dyn_libs["fp32"], "--seq-len", MAX + 1, "--runs", 1)
    assert res.exit_code != 0 and f"at most {MAX}" in res.output and "Traceback" not in res.output


def test_the_buckets_share_one_copy_of_the_weights(dyn_libs, dyn_int8, int8_lib):
    """The any-length int8 library is larger than the one-length (32) library by its other buckets' code,
    each far less than a second copy of the weights (the int8 model's size: 2.3 MB for the tiny model)."""
    meta = json.loads((dyn_libs["int8"] / "metadata.json").read_text())
    one = json.loads((int8_lib / "metadata.json").read_text())["library"]["bytes"]
    weights = json.loads((dyn_int8 / "manifest.json").read_text())["results"]["int8_bytes"]
    assert (meta["library"]["bytes"] - one) / (len(meta["lengths"]) - 1) <= 0.5 * weights, (meta, one, weights)


def test_the_cpp_runner_pads_to_the_bucket_like_the_python_runtime(dyn_libs):
    from squeezeedge.deploy.bundle import run_library

    model = runtime.load(dyn_libs["int8"])
    for n in (3, 17):
        feed = _feed(n)
        np.testing.assert_allclose(run_library(dyn_libs["int8"], feed), model(**feed)[0], atol=1e-5, rtol=0)
    with pytest.raises(InputError, match=f"at most {MAX}"):
        run_library(dyn_libs["int8"], _feed(MAX + 1))


def test_quantize_calibrates_and_measures_at_the_texts_own_lengths(dyn_int8):
    fid = manifest(dyn_int8)["results"]["fidelity"]
    assert fid["tokens"]["ran_at"] == "own length"
    assert fid["tokens"]["median"] < 25 <= MAX  # the shipped corpus: median 14 tokens


def test_an_emulated_pi5_fp32_library_takes_every_length(dyn_export, tmp_path):
    """Cross-built for the Pi 5 and checked under qemu (the C++ runner padding to the bucket) at 1, 12, 13
    and 32 tokens against onnxruntime at exactly those lengths, within 1e-4 (the build's own check)."""
    out = tmp_path / "fp32-rpi5"
    res = cli("-q", "build", dyn_export, "--target", "rpi5", "--out", out)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["validation"]["lengths"] == [1, 12, 13, MAX] and meta["validation"]["max_abs_diff"] <= 1e-4
    assert meta["validation"]["ran"].startswith("under qemu")


def test_an_emulated_pi5_library_takes_every_length(dyn_int8, tmp_path):
    """Cross-built for the Pi 5, checked under qemu at 1, 12, 13 and 32 tokens against onnxruntime (the
    build's own validation), and a bundle whose run.sh runs the example's first N tokens."""
    import subprocess
    import tarfile

    out = tmp_path / "int8-rpi5"
    res = cli("-q", "build", dyn_int8, "--target", "rpi5", "--bundle", "--out", out)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metadata.json").read_text())
    # 10, 14 and 18 too (int8 on aarch64: the attention's keys padded to a multiple of 4), 11 tokens run in 12
    assert meta["lengths"] == [10, 12, 14, 16, 18, 20, 24, MAX] and meta["validation"]["lengths"] == [1, 10, 11, MAX]
    assert meta["validation"]["ran"].startswith("under qemu")
    with tarfile.open(out.with_name(out.name + ".tar.gz")) as tar:
        tar.extractall(tmp_path, filter="data")
    run_sh = tmp_path / out.name / "run.sh"
    env = {"SE_EMULATOR": "qemu-aarch64 -L /usr/aarch64-linux-gnu", "PATH": "/usr/bin:/bin"}
    whole = subprocess.run(["sh", str(run_sh)], capture_output=True, text=True, env=env, timeout=600)
    assert whole.returncode == 0 and "output matches" in whole.stdout, whole.stdout + whole.stderr
    part = subprocess.run(["sh", str(run_sh), "9"], capture_output=True, text=True, env=env, timeout=600)
    assert part.returncode == 0 and "run 4:" in part.stdout, part.stdout + part.stderr


def test_bench_times_real_text_at_its_own_length_and_each_length(dyn_libs, tmp_path):
    out = tmp_path / "bench.json"
    res = cli("-q", "bench", dyn_libs["int8"], dyn_libs["fp32"], "--baselines", "ort,torch", "--repeat", 3,
              "--warmup", 1, "--out", out)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    text = rep["workloads"]["text"]
    names = {r["name"] for r in text["rows"]}
    assert {"squeezeedge int8 (host)", "squeezeedge fp32 (host)", "onnxruntime int8", "onnxruntime fp32",
            "onnxruntime int8 (its own recipe)",
            "pytorch fp32"} == names
    assert text["texts"] == 64 and text["passes"] >= 1 and text["tokens"]["max"] <= MAX
    for r in text["rows"]:
        assert r["stats"]["n"] == text["texts"] * text["passes"] and r["mean_ms_per_text"] > 0
    fp32 = next(r for r in text["rows"] if r["name"] == "squeezeedge fp32 (host)")
    assert fp32["agreement"]["min_cosine"] > 0.9999  # padded to its bucket vs PyTorch at the text's length
    lengths = rep["workloads"]["lengths"]
    assert lengths["points"] == [16, MAX] and lengths["rows"][str(MAX)] == "main"
    assert {r["name"] for r in lengths["rows"]["16"]} == names
    report = cli("-q", "report", out, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.index("real text, each at its own length") < md.index(f"latency at {MAX} tokens")
    assert (tmp_path / "report" / "length.png").stat().st_size > 1000


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_at_own_lengths(dyn_export, method, tmp_path):
    """Histogram calibrators get texts of unequal lengths from a --dynamic export (onnxruntime stacks a
    stride's outputs into one array; it once failed here with a traceback)."""
    out = tmp_path / method
    res = cli("-q", "quantize", dyn_export, *FAST_Q, "--method", method, "--out", out)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())["results"]
    assert m["method"] == method and m["fidelity"]["mean_cosine"] >= 0.99
