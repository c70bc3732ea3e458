"""Running libraries without Python: the C++ deploy runner, the board's TVM runtime, qemu, bundles.

The runner (runner/run_model.cc) links against the TVM runtime only (libtvm_runtime.so +
libtvm_ffi.so). For aarch64 those two libraries come from the apache-tvm / apache-tvm-ffi manylinux
aarch64 wheels on PyPI (the same release as the compiler), fetched once into RUNTIME_HOME; the runner
is cross-compiled with Debian's aarch64 g++, and runs here under qemu-user with the arm64 cross libc,
so a cross-built library is proven to run and to give the x86 build's answers before a board exists.
Emulated times are never reported as latencies.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import sha256_file
from squeezeedge.errors import ArtifactError, InputError, ToolchainError

RUNNER_SRC = Path(__file__).with_name("runner") / "run_model.cc"
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
CUDA_PLUGIN = "libtvm_runtime_cuda.so"  # TVM's CUDA runtime (a Jetson bundle's GPU library needs it)
WHEELS = {"apache-tvm": ("tvm/lib/libtvm_runtime.so", f"tvm/lib/{CUDA_PLUGIN}"),
          "apache-tvm-ffi": ("tvm_ffi/lib/libtvm_ffi.so",)}
SYSROOT = {"aarch64": Path("/usr/aarch64-linux-gnu")}
QEMU = {"aarch64": "qemu-aarch64"}
GXX = {"aarch64": "aarch64-linux-gnu-g++", "x86_64": "g++"}
PACKAGES = {"qemu-aarch64": "qemu-user", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
            "/usr/aarch64-linux-gnu": "libc6-arm64-cross libstdc++6-arm64-cross"}
RUNTIME_HOME = Path(os.environ.get("SQUEEZEEDGE_RUNTIME_HOME", Path.home() / ".cache" / "squeezeedge" / "runtime"))


def _site() -> Path:
    import tvm_ffi

    return Path(tvm_ffi.__file__).resolve().parent.parent


def wheel_versions() -> dict[str, str]:
    """The installed compiler's versions: the board runtime must be the same release."""
    from importlib import metadata

    return {name: metadata.version(name) for name in WHEELS}


def runtime_dir(arch: str) -> Path:
    """Directory holding libtvm_runtime.so, libtvm_ffi.so and the CUDA plugin for ``arch`` (fetched from
    PyPI once)."""
    versions = wheel_versions()
    if arch == platform.machine():
        site = _site()
        return _linked_dir(RUNTIME_HOME / f"{arch}-{hashlib.sha256(str(site).encode()).hexdigest()[:12]}",
                           [site / m for members in WHEELS.values() for m in members])
    dest = RUNTIME_HOME / f"{arch}-tvm{versions['apache-tvm']}"
    if all((dest / f).is_file() for f in (*RUNTIME_LIBS, CUDA_PLUGIN)):
        return dest
    platforms = {"aarch64": "manylinux_2_28_aarch64"}
    if arch not in platforms:
        raise ToolchainError(f"no TVM runtime wheel is known for {arch}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp, console.step(f"fetching the {arch} TVM runtime from PyPI"):
        pins = [f"{name}=={ver}" for name, ver in versions.items()]
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                              "--platform", platforms[arch], "--python-version", "3.11", "-d", tmp, *pins],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise ToolchainError(f"cannot download the {arch} TVM runtime wheels ({', '.join(pins)}): "
                                 f"{(res.stderr.strip().splitlines() or ['pip failed'])[-1][:200]}")
        for (name, members), wheel in zip(WHEELS.items(), (sorted(Path(tmp).glob(f"{n.replace('-', '_')}-*.whl"))
                                                                for n in WHEELS)):
            if not wheel:
                raise ToolchainError(f"pip did not fetch the {name} wheel for {arch}")
            with zipfile.ZipFile(wheel[0]) as z:
                for member in members:
                    part = dest / f".{Path(member).name}.part"
                    part.write_bytes(z.read(member))
                    os.replace(part, dest / Path(member).name)
    return dest


def _linked_dir(d: Path, libs: list[Path]) -> Path:
    """This environment's own runtime libraries, linked side by side (the runner's $ORIGIN lookup)."""
    d.mkdir(parents=True, exist_ok=True)
    for lib in libs:
        link = d / lib.name
        if link.is_symlink() and link.resolve() != lib.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(lib)
    return d


def need(tool: str) -> str:
    """Path of a tool (or sysroot) or ToolchainError naming the Debian package to install."""
    found = tool if tool.startswith("/") and Path(tool).is_dir() else shutil.which(tool)
    if not found:
        raise ToolchainError(f"{tool} is not installed (apt-get install {PACKAGES.get(tool, tool)})")
    return found


def runner(arch: str, src: Path = RUNNER_SRC) -> Path:
    """The deploy runner (or another tool in compiler/deploy/runner/) for ``arch``, compiled once per source
    version next to its runtime."""
    rt = runtime_dir(arch)
    exe = rt / f"{src.stem}-{sha256_file(src)[:12]}"
    if exe.is_file():
        return exe
    gxx = need(GXX.get(arch, f"{arch}-linux-gnu-g++"))
    include = _site() / "tvm_ffi" / "include"
    part = rt / f".{exe.name}.part-{os.getpid()}"
    with console.step(f"compiling the {arch} {src.stem}"):
        res = subprocess.run([gxx, "-std=c++17", "-O2", "-o", str(part), str(src), f"-I{include}", f"-L{rt}",
                              "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN:$ORIGIN/lib"],
                             capture_output=True, text=True)
    if res.returncode != 0:
        raise ToolchainError(f"{gxx} could not build {src.name}: {(res.stderr.strip().splitlines() or ['?'])[0]}")
    os.replace(part, exe)
    return exe


def emulator_prefix(arch: str) -> list[str]:
    """Command prefix that runs an ``arch`` binary here: nothing natively, qemu-user otherwise."""
    if arch == platform.machine():
        return []
    if arch not in QEMU:
        raise ToolchainError(f"no emulator known for {arch}")
    return [need(QEMU[arch]), "-L", need(str(SYSROOT[arch]))]


def run_library(lib_dir: Path, feed: dict, repeat: int = 1, timeout: float = 1800):
    """Run a built library (any architecture qemu covers) through the C++ runner; first output, float32.

    The library is checked against its metadata's sha256 first; inputs are checked like runtime.load.
    """
    from squeezeedge.runtime import load_metadata

    meta, lib = load_metadata(Path(lib_dir))
    return run_file(lib, meta, feed, repeat, timeout)


def run_file(lib: Path, meta: dict, feed: dict, repeat: int = 1, timeout: float = 1800):
    """run_library for a library file and its (inputs, outputs, vocab sizes) record."""
    return _run(lib, meta, feed, repeat, timeout)[0]


def _run(lib: Path, meta: dict, feed: dict, repeat: int, timeout: float):
    """(first output as float32, the runner's stdout)."""
    import numpy as np

    from squeezeedge.runtime import LoadedModel, elf_machine

    arch = elf_machine(lib)
    prefix = emulator_prefix(arch)
    exe = runner(arch)
    check = LoadedModel(None, meta["inputs"], meta["outputs"], vocab_size=meta.get("vocab_size"),
                        type_vocab_size=meta.get("type_vocab_size"), lengths=meta.get("lengths"))
    arrays = check._check(feed)
    with tempfile.TemporaryDirectory(prefix="se-run-") as tmp:
        tmp = Path(tmp)
        for lib_name in RUNTIME_LIBS:  # $ORIGIN lookup: the runner and the runtime side by side
            (tmp / lib_name).symlink_to(runtime_dir(arch) / lib_name)
        shutil.copy(exe, tmp / "run_model")
        specs = []
        for spec, arr in zip(meta["inputs"], arrays):
            arr.tofile(tmp / f"{spec['name']}.bin")
            specs.append(f"{spec['name']}:{spec['dtype']}:{'x'.join(map(str, arr.shape))}:{tmp / (spec['name'] + '.bin')}")
        threads = (meta.get("target") or {}).get("threads") or 0
        lengths = ["--lengths", ",".join(map(str, meta["lengths"]))] if meta.get("lengths") else []
        cmd = [*prefix, str(tmp / "run_model"), "--threads", str(threads), *lengths, str(lib), str(tmp / "out.bin"),
               str(repeat), *specs]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"{lib} did not finish in {timeout:.0f} s under {'qemu' if prefix else 'the runner'}") \
                from None
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
            raise ArtifactError(f"{lib} failed in the deploy runner{' under qemu' if prefix else ''}: {why[:200]}")
        return np.fromfile(tmp / "out.bin", dtype=np.float32).reshape(meta["outputs"][0]["shape"]), res.stdout


# --- bundles ------------------------------------------------------------------------------------------

BUNDLE_README = """# squeezeedge deploy bundle: {name}

Built for target `{target}` ({arch}, {description}); {precision}; model sha256 {model_sha}.

## Contents
- `model.so`: the compiled model (sha256 in metadata.json: check it before you run it){cuda_contents}
- `metadata.json`: inputs, outputs, target, int8 coverage, tuning, build validation
- `run_model`: the deploy runner (C++, {arch}), needs only the TVM runtime below
- `lib/libtvm_runtime.so`, `lib/libtvm_ffi.so`: the TVM {tvm_version} runtime for {arch}
  (from the apache-tvm / apache-tvm-ffi manylinux wheels); the runner finds them through its rpath
- `inputs/*.bin`: one example input (raw little-endian {dtype}, shape {shape}), and
  `inputs/expected_output.bin` (raw float32): the output of {expected_from} on the build machine{emulated}
- `run.sh`: runs the example and compares with the expected output
- `tokenizer.json`, `answer.py`, `requirements-board.txt`: text in, answer out, from Python (below)

## On the board ({arch} Linux, glibc 2.28 or newer)
    tar xzf {name}.tar.gz && cd {name}
    sha256sum model.so        # must equal metadata.json library.sha256
    ./run.sh                  # prints per-run milliseconds, then "output matches (...)"{cuda_usage}

Expected output (first values): {expected}
Tolerance: {tolerance_text}

To run your own inputs: `./run_model{device_opt} --threads {threads}{lengths_opt} ./model.so out.bin REPEAT NAME:DTYPE:1x{seq}:FILE ...`
with one NAME:DTYPE:SHAPE:FILE per input, in the order of metadata.json `inputs`; out.bin receives the
first output as float32. {any_length} Threads: the target's {threads} (0: all cores), at most the CPUs the process may
use; TVM_NUM_THREADS overrides it.

## Beside onnxruntime on this board
    pip install onnxruntime numpy                 # on the board, once
    ./run.sh --vs-onnxruntime MODEL.onnx [ROUNDS] # medians of both, their ratio, output cosine

`vs_onnxruntime.py` times `run_model` and onnxruntime on the example input with the same threads, one
after the other. MODEL.onnx: the model this library was built from is `{onnx}` on the build machine;
onnxruntime's own int8 recipe (its fastest) is what `squeezeedge bench` quantizes into WORKDIR/ort-recipe/.
Without a board, `squeezeedge bench LIB_DIR --emulate` counts both on the board's core (instructions).

## From Python: text in, answer out
    pip install -r requirements-board.txt       # numpy, TVM {tvm_version}'s runtime, tokenizers: no torch
    pip install --no-deps squeezeedge-*.whl     # the squeezeedge wheel, without its compile dependencies
    ./run.sh --text "a sentence" "another"     # prints each text's {answer}

or in your program: `from squeezeedge.runtime import load; model = load(".")`, then `model("a sentence")`
(a numpy array: {answer}) or `model(["a", "b"])` (one each{own_length}); `model(input_ids=...)` takes
token ids. `tokenizer.json` is the model's tokenizer{tokenizer_sha}. Texts past {seq} tokens are refused;
`load(".", truncate=True)` (`SE_TRUNCATE=1 ./run.sh --text ...`) cuts them instead.

Or remotely from a workstation: start `python -m tvm.exec.rpc_server --tracker HOST:9190 --key {rpc_key}`
on the board and run `squeezeedge bench LIB_DIR --tracker HOST:9190 --key {rpc_key}` (TVM RPC has
no authentication: keep it on a trusted network).
"""

CUDA_CONTENTS = """
- `model-cpu.so`: the same model for the board's CPU cores alone (sha256 in metadata.json cpu_library)
- `lib/libtvm_runtime_cuda.so`: TVM's CUDA runtime, which `run_model --device cuda` loads; it needs
  the board's `libcuda.so.1` (the driver) and `libcudart.so.13` (CUDA 13)"""

CUDA_USAGE = """
    ./run.sh --cpu            # model-cpu.so on the CPU cores instead (checked against the expected output)

No GPU ran `model.so` on the build machine: `./run.sh` is its first run. The expected output is the CPU
library's; the GPU's float kernels round differently, so it is held to what the build holds a library to
against onnxruntime ({gpu_rule}). If `run_model` cannot load `lib/libtvm_runtime_cuda.so`, the message
names the CUDA library the board lacks."""

RUN_SH = """#!/bin/sh
# Run the example input through the library and compare with the expected output.
# SE_EMULATOR lets a non-{arch} machine run this under qemu, e.g.
#   SE_EMULATOR="qemu-aarch64 -L /usr/aarch64-linux-gnu" ./run.sh
#   ./run.sh N   runs the example's first N tokens instead (a library that takes any length){cuda_help}
set -e
cd "$(dirname "$0")"
#   ./run.sh --vs-onnxruntime MODEL.onnx [ROUNDS]   times the library and onnxruntime side by side (python3)
if [ "$1" = "--vs-onnxruntime" ]; then shift; exec python3 vs_onnxruntime.py "$@"; fi
#   ./run.sh --text "a sentence" [...]   answers text from Python (README.md, 'From Python')
if [ "$1" = "--text" ]; then shift; exec python3 answer.py "$@"; fi
LIB=./model.so DEVICE={device} CHECK={check}{cuda_switch}
# TVM's pool: the target's {threads} thread(s) (0: all), at most the CPUs this process may use, unless
# TVM_NUM_THREADS is set
if [ -n "$1" ]; then
  if [ -z "{lengths_opt}" ]; then echo "this library takes exactly {seq} tokens"; exit 2; fi
  mkdir -p "inputs/first-$1"
  for f in {names}; do head -c $(( $1 * {elem_bytes} )) "inputs/$f.bin" > "inputs/first-$1/$f.bin"; done
  $SE_EMULATOR ./run_model --device $DEVICE --threads {threads}{lengths_opt} $LIB out.bin 5 {specs_n}
  exit 0
fi
$SE_EMULATOR ./run_model --device $DEVICE --threads {threads}{lengths_opt} $LIB out.bin 5 {specs}
if ! command -v python3 >/dev/null; then
  [ $CHECK = exact ] && cmp -s out.bin inputs/expected_output.bin && echo "output matches (bit-identical)" && exit 0
  echo "output differs from inputs/expected_output.bin, or is not bit-comparable (install python3 for the check)"
  exit 1
fi
CHECK=$CHECK python3 - <<'EOF'
import math, os, struct
n = {n}
got = struct.unpack("<%df" % n, open("out.bin", "rb").read())
exp = struct.unpack("<%df" % n, open("inputs/expected_output.bin", "rb").read())
diff = max(abs(a - b) for a, b in zip(got, exp))
norms = math.sqrt(sum(a * a for a in got)) * math.sqrt(sum(b * b for b in exp))
cos = sum(a * b for a, b in zip(got, exp)) / norms if norms else float(diff == 0)
if os.environ["CHECK"] == "exact":
    ok, how = diff <= {tolerance}, "max abs diff %.3g, tolerance {tolerance}" % diff
else:  # the GPU library against the CPU library's output
    ok, how = {gpu_ok}, "max abs diff %.3g, cosine %.5f; {gpu_rule}" % (diff, cos)
print("output", "matches" if ok else "DIFFERS", "(%s)" % how)
raise SystemExit(0 if ok else 1)
EOF
"""


def write_bundle(lib_dir: Path, out: Path, expected, feed: dict, emulated: bool, *,
                 gpu_bounds: tuple[float, float], tolerance: float = 1e-5) -> Path:
    """A deploy tarball for the board: library, metadata, runner, runtime, example input, README.

    A CUDA build (metadata ``cpu_library``) also carries its CPU library and TVM's CUDA runtime plugin;
    ``expected`` is then the CPU library's output, and run.sh holds the GPU's to the bounds the build held
    a library to against onnxruntime: ``gpu_bounds`` (fp32 max abs diff, int8 min cosine; the int8 one the
    CPU library's validation adapted, where it ran)."""
    import numpy as np

    from squeezeedge.runtime import board_requirements, elf_machine, load_metadata

    meta, lib = load_metadata(Path(lib_dir))
    arch = elf_machine(lib)
    name = out.name.removesuffix(".tar.gz")
    exe, rt = runner(arch), runtime_dir(arch)
    specs = " ".join(f"{i['name']}:{i['dtype']}:{'x'.join(map(str, i['shape']))}:inputs/{i['name']}.bin"
                     for i in meta["inputs"])
    expected = np.asarray(expected, dtype=np.float32)
    files: dict[str, bytes | Path] = {"model.so": lib, "metadata.json": Path(lib_dir) / "metadata.json",
                                      "run_model": exe, "lib/libtvm_runtime.so": rt / "libtvm_runtime.so",
                                      "lib/libtvm_ffi.so": rt / "libtvm_ffi.so",
                                      "inputs/expected_output.bin": expected.tobytes(),
                                      "vs_onnxruntime.py": RUNNER_SRC.with_name("vs_onnxruntime.py"),
                                      "answer.py": RUNNER_SRC.with_name("answer.py"),
                                      "requirements-board.txt": "\n".join([*board_requirements(), ""]).encode()}
    if meta.get("tokenizer"):
        files[meta["tokenizer"]["file"]] = Path(lib_dir) / meta["tokenizer"]["file"]
    cpu = meta.get("cpu_library")
    if cpu:
        files[cpu["file"]] = Path(lib_dir) / cpu["file"]
        files[f"lib/{CUDA_PLUGIN}"] = rt / CUDA_PLUGIN
        max_abs, min_cosine = gpu_bounds
        if meta["precision"] == "int8":
            bound = (cpu.get("validation") or {}).get("required_min_cosine", min_cosine)
            gpu_rule, gpu_ok = f"cosine >= {bound:g}", f"cos >= {bound!r}"
        else:
            gpu_rule, gpu_ok = f"max abs diff <= {max_abs:g}", f"diff <= {max_abs!r}"
    for i in meta["inputs"]:
        files[f"inputs/{i['name']}.bin"] = np.ascontiguousarray(feed[i["name"]], dtype=i["dtype"]).tobytes()
    target = meta["target"]
    threads = target.get("threads") or 0  # 0: all cores
    lengths_opt = f" --lengths {','.join(map(str, meta['lengths']))}" if meta.get("lengths") else ""
    if meta["inputs"][0]["shape"][0] != 1:
        lengths_opt_sh = ""  # ./run.sh N cuts the first N tokens of a batch-1 example only
    else:
        lengths_opt_sh = lengths_opt
    specs_n = " ".join(f"{i['name']}:{i['dtype']}:1x$1:inputs/first-$1/{i['name']}.bin" for i in meta["inputs"])
    files["run.sh"] = RUN_SH.format(
        arch=arch, specs=specs, n=expected.size, tolerance=tolerance, threads=threads, lengths_opt=lengths_opt_sh,
        seq=meta["inputs"][0]["shape"][1], names=" ".join(i["name"] for i in meta["inputs"]), specs_n=specs_n,
        elem_bytes=8 if meta["inputs"][0]["dtype"] == "int64" else 4,
        device="cuda" if cpu else "cpu", check="gpu" if cpu else "exact",
        cuda_help=("\n#   ./run.sh --cpu [N]   runs model-cpu.so on the CPU cores instead of model.so on the GPU"
                   if cpu else ""),
        cuda_switch=(f'\nif [ "$1" = "--cpu" ]; then LIB=./{cpu["file"]} DEVICE=cpu CHECK=exact; shift; fi'
                     if cpu else ""),
        gpu_rule=gpu_rule if cpu else "", gpu_ok=gpu_ok if cpu else "False").encode()
    files["README.md"] = _bundle_readme(meta, Path(lib_dir), name, arch, expected, threads, lengths_opt, emulated,
                                        cpu, gpu_rule if cpu else "", tolerance)
    return _write_tar(files, out, name)


def _bundle_readme(meta: dict, lib_dir: Path, name: str, arch: str, expected, threads: int, lengths_opt: str,
                   emulated: bool, cpu: dict | None, gpu_rule: str, tolerance: float) -> bytes:
    """The bundle's README.md, filled in from the library's metadata."""
    target = meta["target"]
    return BUNDLE_README.format(
        name=name, target=target["name"], arch=arch, description=_describe(target), precision=meta["precision"],
        model_sha=meta["model"]["sha256"][:16], tvm_version=wheel_versions()["apache-tvm"],
        dtype=meta["inputs"][0]["dtype"], shape="x".join(map(str, meta["inputs"][0]["shape"])),
        seq=meta["inputs"][0]["shape"][1], expected=", ".join(f"{v:.6g}" for v in expected.ravel()[:4]),
        rpc_key=target.get("name"), threads=threads, lengths_opt=lengths_opt,
        any_length=(f"This library takes any length from 1 to {meta['lengths'][-1]} tokens (a shape 1xL input is padded to "
                    f"the smallest of {', '.join(map(str, meta['lengths']))} that holds it); `./run.sh N` runs the "
                    "example's first N tokens.") if meta.get("lengths") else "",
        emulated=" (computed under qemu-user from this bundle's own runner and runtime)" if emulated else "",
        expected_from=f"`{cpu['file']}`" if cpu else "the same library",
        cuda_contents=CUDA_CONTENTS if cpu else "",
        cuda_usage=CUDA_USAGE.format(gpu_rule=gpu_rule) if cpu else "",
        tolerance_text=(f"`./run.sh --cpu`: max abs diff {tolerance}; `./run.sh` (GPU): {gpu_rule}" if cpu else
                        f"max abs diff {tolerance} (the runner writes float32; the same library on the same inputs\n"
                        "gives the same bits unless the board's CPU takes another code path)."),
        device_opt=" --device cuda" if cpu else "", onnx=_built_from(lib_dir),
        answer="sentence embedding" if meta["model"].get("head") == "embed" else "logits",
        own_length=(", each at its own length" if meta.get("lengths")
                    else f", padded to {meta['inputs'][0]['shape'][1]}"),
        tokenizer_sha=(f" (sha256 {meta['tokenizer']['sha256'][:16]}... in metadata.json)" if meta.get("tokenizer")
                       else "; this library has none: pass token ids")).encode()


def _write_tar(files: dict, out: Path, name: str) -> Path:
    """``files`` (archive name -> bytes or a file) as ``out`` (NAME/...), written whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part-{os.getpid()}")
    with tarfile.open(part, "w:gz") as tar:
        for arcname, src in files.items():
            data = src.read_bytes() if isinstance(src, Path) else src
            info = tarfile.TarInfo(f"{name}/{arcname}")
            info.size, info.mode = len(data), 0o755 if arcname in ("run_model", "run.sh") else 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    os.replace(part, out)
    return out


def bundle_library(art, gpu_bounds: tuple[float, float]) -> Path:
    """Write ``<build dir>.tar.gz`` beside a build artifact; its expected output comes from running the
    bundle's own runner and runtime here (under qemu for another architecture). A CUDA build's comes from
    its CPU library: no GPU runs here (``gpu_bounds``: :func:`write_bundle`)."""
    import json

    from squeezeedge.runtime import elf_machine, random_inputs

    tarball = art.path.with_name(art.path.name + ".tar.gz")
    stamp = tarball.with_name("." + tarball.name + ".sha256")  # the build it was made from
    if tarball.is_file() and stamp.is_file() and stamp.read_text().strip() == art.sha256:
        console.info(f"bundle {tarball.name}: unchanged (made from this build)")
        return tarball
    stamp.unlink(missing_ok=True)
    meta = json.loads((art.path / "metadata.json").read_text())
    shape = meta["inputs"][0]["shape"]
    feed = random_inputs(meta.get("vocab_size") or 30528, meta.get("type_vocab_size") or 2, shape[0], shape[1], 7)
    cpu = meta.get("cpu_library")
    lib = art.path / (cpu or meta["library"])["file"]
    if cpu and sha256_file(lib) != cpu["sha256"]:
        raise ArtifactError(f"{lib} does not match the sha256 in metadata.json (truncated or tampered)")
    emulated = elf_machine(lib) != platform.machine()
    with console.step(f"running the bundle's example input{' through ' + lib.name if cpu else ''}"
                      + (" under qemu" if emulated else "")):
        expected = run_file(lib, meta, feed) if cpu else run_library(art.path, feed)
    write_bundle(art.path, tarball, expected, feed, emulated, gpu_bounds=gpu_bounds)
    stamp.write_text(art.sha256 + "\n")
    return tarball


def _built_from(lib_dir: Path) -> str:
    """The ONNX file the library was built from (its parent artifact's model.onnx)."""
    import json

    manifest = lib_dir / "manifest.json"
    parent = (json.loads(manifest.read_text()).get("parent") or {}).get("path") if manifest.is_file() else None
    return str(Path(parent) / "model.onnx") if parent else "the export or quantize stage's model.onnx"


def _describe(target: dict) -> str:
    tvm = target.get("tvm", {})
    host = tvm.get("host", {}) if isinstance(tvm.get("host"), dict) else {}
    return f"{tvm.get('kind')} {tvm.get('mcpu') or host.get('mcpu') or ''}".strip()


def safe_extract(tarball: Path, dest: Path) -> list[str]:
    """Unpack a bundle refusing absolute paths, '..', links and devices (no path traversal)."""
    names = []
    with tarfile.open(tarball) as tar:
        for m in tar.getmembers():
            p = Path(m.name)
            if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                raise InputError(f"{tarball}: refusing to unpack '{m.name}' (absolute path, '..' or a link)")
            names.append(m.name)
        tar.extractall(dest, filter="data")
    return names
