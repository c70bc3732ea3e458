"""A board answers text: the library carries its tokenizer, ``load(DIR)("text")`` returns the head's output,
and the light install (numpy, TVM's runtime, tokenizers and the squeezeedge wheel without its compile
dependencies) does it exactly as the full install does, here and on the Pi 5's core under qemu."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from squeezeedge import runtime
from squeezeedge.artifact import sha256_file
from squeezeedge.deploy import bundle as deploy
from squeezeedge.errors import ArtifactError, InputError

from ..conftest import TINY_SEQ, cli

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["a sentence", "The board answers text in its own words, at its own length."]
HEAVY = ("torch", "onnx", "onnxruntime", "transformers")
# numpy, apache-tvm, apache-tvm-ffi, tokenizers, and what TVM's wheel itself imports
LIGHT_DISTS = (*runtime.BOARD_PACKAGES, "ml_dtypes", "typing_extensions")


@pytest.fixture(scope="module")
def any_length(tmp_path_factory) -> Path:
    """A tiny fp32 library that takes any length up to TINY_SEQ tokens."""
    root = tmp_path_factory.mktemp("text")
    for args in (["export", "--model", "squeezebert-tiny", "--dynamic", "--seq-len", TINY_SEQ, "--out", root / "e"],
                 ["build", root / "e", "--target", "host", "--out", root / "lib"]):
        res = cli("-q", *args)
        assert res.exit_code == 0, res.output
    return root / "lib"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp)], check=True, capture_output=True, cwd=tmp)
    (whl,) = tmp.glob("squeezeedge-*.whl")
    return whl


@pytest.fixture(scope="module")
def light_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the light install: the board packages (linked from this venv, no
    download) and the squeezeedge wheel installed with --no-deps."""
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    for name in LIGHT_DISTS:
        dist = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"__pycache__", ".."}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    return venv


ANSWER = """
import importlib.util, json, sys
import squeezeedge.runtime as rt
model = rt.load(sys.argv[1])
out = [model(t).tolist() for t in json.loads(sys.argv[2])]
print(json.dumps({"out": out, "imported": sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[3]))),
                  "installed": [m for m in json.loads(sys.argv[3]) if importlib.util.find_spec(m)],
                  "runtime": rt.__file__}))
"""


def _unpack(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest / tarball.name.removesuffix(".tar.gz")


def test_build_puts_the_tokenizer_in_the_library_and_the_bundle(any_length, tiny_int8, tmp_path):
    meta = json.loads((any_length / "metadata.json").read_text())
    tok = meta["tokenizer"]
    assert tok["file"] == "tokenizer.json" and tok["sha256"] == sha256_file(any_length / "tokenizer.json")
    res = cli("-q", "build", tiny_int8, "--target", "host", "--bundle", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    b = _unpack(tmp_path / "b.tar.gz", tmp_path / "x")
    for name in ("tokenizer.json", "answer.py", "requirements-board.txt"):
        assert (b / name).is_file(), name
    assert (b / "requirements-board.txt").read_text().split() == [
        f"{n}=={md.version(n)}" for n in runtime.BOARD_PACKAGES]
    readme = (b / "README.md").read_text()
    assert "./run.sh --text" in readme and "pip install -r requirements-board.txt" in readme


def test_text_answers_at_its_own_length_as_token_ids_do(any_length):
    """model("text") is the first output of the same text's token ids at their own length, 1-D; a list
    answers each text at its own length."""
    model = runtime.load(any_length)
    for text in TEXTS:
        feed = model.tokenize(text)
        assert feed["input_ids"][0, 0] == 101 and feed["input_ids"][0, -1] == 102  # [CLS] ... [SEP]
        assert feed["input_ids"].shape[1] < TINY_SEQ and feed["attention_mask"].all()
        got = model(text)
        assert got.shape == (2,)
        np.testing.assert_array_equal(got, model(**feed)[0][0])
    both = model(TEXTS)
    assert len(both) == 2
    for text, got in zip(TEXTS, both):
        np.testing.assert_array_equal(got, model(text))


def test_text_past_the_maximum_is_refused_or_truncated_when_asked(any_length):
    long = "word " * (TINY_SEQ + 5)
    with pytest.raises(InputError, match=f"at most {TINY_SEQ}.*truncate=True"):
        runtime.load(any_length)(long)
    cut = runtime.load(any_length, truncate=True)
    feed = cut.tokenize(long)
    assert feed["input_ids"].shape == (1, TINY_SEQ) and feed["input_ids"][0, -1] == 102
    assert np.isfinite(cut(long)).all()


def test_bad_text_and_missing_or_tampered_tokenizers_are_named(any_length, tmp_path):
    model = runtime.load(any_length)
    with pytest.raises(InputError, match="text or token arrays, not both"):
        model("a", input_ids=np.zeros((1, 4), np.int64))
    with pytest.raises(InputError, match="string or a list of strings"):
        model(42)
    copy = tmp_path / "lib"
    copy.mkdir()
    for f in any_length.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtifactError, match="tokenizer.json does not match the sha256"):
        runtime.load(copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta.pop("tokenizer")
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="carries no tokenizer.json.*input_ids"):
        runtime.load(copy)("a sentence")


def test_light_install_answers_text_exactly_as_the_full_install(light_venv, int8_lib, tiny_int8, tmp_path):
    """A venv with only numpy, TVM's runtime, tokenizers and the wheel (--no-deps): no heavy package is
    installed or imported, and a host bundle's answers equal the full install's (max abs diff <= 1e-6)."""
    res = cli("-q", "build", tiny_int8, "--target", "host", "--bundle", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    b = _unpack(tmp_path / "b.tar.gz", tmp_path / "x")
    run = subprocess.run([str(light_venv / "bin" / "python"), "-c", ANSWER, str(b), json.dumps(TEXTS),
                          json.dumps(HEAVY)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    light = json.loads(run.stdout)
    assert light["installed"] == [] and light["imported"] == []
    assert light["runtime"].startswith(str(light_venv))  # the wheel's copy, not the clone's
    full = runtime.load(b)
    for text, got in zip(TEXTS, light["out"]):
        assert np.abs(np.asarray(got, np.float32) - full(text)).max() <= 1e-6
    # and bundle's run.sh --text, through the light venv's python3
    env = {"PATH": f"{light_venv / 'bin'}:/usr/bin:/bin"}
    sh = subprocess.run(["./run.sh", "--text", TEXTS[0]], cwd=b, capture_output=True, text=True, env=env)
    assert sh.returncode == 0, sh.stderr
    assert sh.stdout.startswith(f"{TEXTS[0]} -> ")
    np.testing.assert_allclose([float(v) for v in sh.stdout.split("->")[1].split()], full(TEXTS[0]), rtol=1e-5)


def test_importing_the_runtime_imports_no_compile_dependency():
    res = subprocess.run([sys.executable, "-c", "import sys, squeezeedge.runtime; "
                          f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_rpi5_bundle_answers_text_under_qemu_with_the_boards_python(cross_libs, wheel, tmp_path):
    """The Pi 5's aarch64 CPython with the aarch64 numpy / TVM / tokenizers wheels and the squeezeedge
    wheel answers text from an rpi5 bundle on the Cortex-A76 under qemu: the same numbers as the bundle's
    own C++ runner on the same tokens (max abs diff <= 1e-6)."""
    from squeezeedge.deploy import board_python

    if not board_python.ready():
        pytest.skip("the board's Python is not set up: squeezeedge setup-emulation (make test does it)")
    b = _unpack(cross_libs[("rpi5", "int8")].with_suffix(".tar.gz"), tmp_path / "x")
    site = tmp_path / "wheel-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    cmd, env = board_python.python_command("cortex-a76")
    env["PYTHONPATH"] += f":{site}"
    run = subprocess.run([*cmd, "-c", ANSWER, str(b), json.dumps(TEXTS), json.dumps(HEAVY)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    board = json.loads(run.stdout)
    assert board["imported"] == [] and board["runtime"].startswith(str(site))
    host = runtime.LoadedModel(None, *(json.loads((b / "metadata.json").read_text())[k] for k in ("inputs", "outputs")),
                               tokenizer=b / "tokenizer.json")
    for text, got in zip(TEXTS, board["out"]):
        runner = deploy.run_library(b, host.tokenize(text))  # the C++ runner, under qemu
        assert np.abs(np.asarray(got, np.float32) - np.asarray(runner).ravel()).max() <= 1e-6
