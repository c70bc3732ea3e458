"""Cross builds for the Raspberry Pi targets: aarch64 libraries, run under qemu-user through the C++
deploy runner and the apache-tvm aarch64 runtime, give the x86 build's answers; bundles unpack and run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from squeezeedge import runtime
from squeezeedge.deploy import bundle as deploy
from squeezeedge.runtime import random_inputs

from ..conftest import CASES, TINY_SEQ, cli, needs_nvcc

@pytest.mark.parametrize("target, precision", CASES)
def test_cross_build_runs_under_qemu_and_matches_x86(cross_libs, fp32_lib, int8_lib, target, precision):
    """Stated tolerance vs the x86 host build on the same inputs: fp32 max abs 1e-5 (aarch64 fuses
    multiply-adds differently), int8 max abs 1e-5 (integer kernels; only the float epilogues differ)."""
    lib = cross_libs[(target, precision)]
    meta = json.loads((lib / "metadata.json").read_text())
    assert runtime.elf_machine(lib / "model.so") == "aarch64"
    assert meta["validation"]["ran"].startswith("under qemu-user")  # build itself ran it under qemu
    x86 = runtime.load(int8_lib if precision == "int8" else fp32_lib)
    for seed in (11, 12):
        feed = random_inputs(30528, 2, 1, TINY_SEQ, seed)
        got = deploy.run_library(lib, feed)
        np.testing.assert_allclose(got, x86(**feed)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("target, model, instruction", [
    ("rpi5", "tiny_int8_s8", "sdot"), ("rpi4", "tiny_int8_rpi4", "smlal+smlal2+smull2")])
def test_pi_int8_kernels_use_their_cores_instruction_and_match_x86(request, tmp_path, target, model, instruction):
    """With s8 activations every integer multiply-accumulate kernel, the attention's included, is packed
    and tensorized onto the core's instructions (Pi 5: sdot, indexed; Pi 4, no dot product: NEON smull + smlal2 for
    the weight layers, four products a lane (smlal too) where the Pi 4 preset's 7-bit weights allow it and the
    reduction is 32s (the tiny model has both kinds), smull + smull2 for the attention, into partial sums
    added once) with no database; they are in the library's code; under qemu the output equals the x86 build
    of the same model (integer kernels on both: max abs 1e-5)."""
    src = request.getfixturevalue(model)
    pi, x86 = tmp_path / target, tmp_path / "x86"
    for tgt, out in ((target, pi), ("host", x86)):
        res = cli("-q", "build", src, "--target", tgt, "--out", out)
        assert res.exit_code == 0, res.output
    cov = json.loads((pi / "metadata.json").read_text())["int8"]
    assert cov["packed_instruction"] == instruction and cov["packed_kernels"] >= 6
    # all but the classifier, whose 2 outputs fill no 4-output block (sdot's; on the A72 the weight layout's
    # 4 outputs side by side)
    assert cov["tensorized_kernels"] == cov["compiled_integer_mac_kernels"] - 1
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(pi / "model.so")], capture_output=True,
                         text=True, check=True).stdout
    for mnemonic in instruction.split("+"):
        assert sum(1 for line in asm.splitlines() if f"\t{mnemonic}\t" in line) >= cov["packed_kernels"], mnemonic
    if instruction == "sdot":  # reductions that divide by 16 take sdot's indexed form: 4 activations a load
        assert sum(1 for line in asm.splitlines() if "\tsdot\t" in line and ".4b[" in line) >= cov["packed_kernels"]
    host = runtime.load(x86)
    for seed in (13, 14):
        feed = random_inputs(30528, 2, 1, TINY_SEQ, seed)
        np.testing.assert_allclose(deploy.run_library(pi, feed), host(**feed)[0], atol=1e-5, rtol=0)


def test_bundle_unpacks_runs_and_its_readme_is_accurate(cross_libs, tmp_path):
    tarball = cross_libs[("rpi5", "int8")].with_name("int8-rpi5.tar.gz")
    names = deploy.safe_extract(tarball, tmp_path)
    root = tmp_path / "int8-rpi5"
    readme = (root / "README.md").read_text()
    for f in ("model.so", "metadata.json", "run_model", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "run.sh",
              "inputs/expected_output.bin"):
        assert f"int8-rpi5/{f}" in names and f"`{f}`" in readme, f
    for lib in ("run_model", "lib/libtvm_runtime.so"):
        assert runtime.elf_machine(root / lib) == "aarch64"
    expected = np.fromfile(root / "inputs" / "expected_output.bin", dtype=np.float32)
    assert f"Expected output (first values): {expected[0]:.6g}, {expected[1]:.6g}" in readme
    meta = json.loads((root / "metadata.json").read_text())
    assert runtime.load_metadata(root)[0] == meta  # sha256 of the bundled library checks out
    env = dict(os.environ, SE_EMULATOR="qemu-aarch64 -L /usr/aarch64-linux-gnu")
    res = subprocess.run(["sh", str(root / "run.sh")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "output matches" in res.stdout, res.stdout + res.stderr
    assert res.stdout.count(" ms") == 5  # five timed runs printed


def test_bundle_with_path_traversal_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(Exception, match="refusing to unpack '../escaped.txt'"):
        deploy.safe_extract(evil, tmp_path / "x")
    assert not (tmp_path / "escaped.txt").exists()


def test_missing_qemu_names_the_package(tiny_export, tmp_path, monkeypatch):
    real = deploy.shutil.which
    monkeypatch.setattr(deploy.shutil, "which", lambda t: None if t == "qemu-aarch64" else real(t))
    res = cli("build", tiny_export, "--target", "rpi4", "--out", tmp_path / "o")
    assert res.exit_code == 9 and "apt-get install qemu-user" in res.stderr and "--no-emulate" in res.stderr
    assert not (tmp_path / "o").exists()




@pytest.fixture(scope="session")
def orin_lib(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "fp32-orin"
    res = cli("build", tiny_export, "--target", "jetson-orin-nano", "--bundle", "--out", out)
    assert res.exit_code == 0, res.output
    return out


@needs_nvcc
def test_jetson_build_embeds_sm87_kernels_and_a_checked_cpu_library(orin_lib, fp32_lib):
    from squeezeedge.deploy.cuda import fatbin_cubins

    meta = json.loads((orin_lib / "metadata.json").read_text())
    bins = fatbin_cubins(orin_lib / "model.so")  # parsed from the library file itself
    assert any(b["kind"] == "cubin" and b["arch"] == "sm_87" and b["bytes"] > 10_000 for b in bins), bins
    assert meta["cuda"]["device_binaries"] == bins and meta["target"]["tvm"]["arch"] == "sm_87"
    assert runtime.elf_machine(orin_lib / "model.so") == "aarch64"  # host side of the CUDA library
    cpu = meta["cpu_library"]
    assert cpu["validation"]["ran"].startswith("under qemu-user") and cpu["validation"]["max_abs_diff"] <= 1e-4
    feed = random_inputs(30528, 2, 1, TINY_SEQ, 21)
    cpu_meta = dict(meta, library={"file": cpu["file"], "sha256": cpu["sha256"]})
    got = deploy.run_file(orin_lib / cpu["file"], cpu_meta, feed)
    np.testing.assert_allclose(got, runtime.load(fp32_lib)(**feed)[0], atol=1e-5, rtol=0)


@needs_nvcc
def test_jetson_bundle_checks_its_cpu_library_and_names_what_the_gpu_run_lacks(orin_lib, tmp_path):
    """The Jetson bundle carries both libraries and TVM's CUDA plugin; its expected output is the CPU
    library's (no GPU here), which `run.sh --cpu` reproduces under qemu within 1e-5; `run.sh` (the GPU
    library) here fails in one line naming the CUDA runtime the machine lacks, not the module loader."""
    names = deploy.safe_extract(orin_lib.with_name("fp32-orin.tar.gz"), tmp_path)
    root = tmp_path / "fp32-orin"
    readme = (root / "README.md").read_text()
    for f in ("model.so", "model-cpu.so", "lib/libtvm_runtime_cuda.so", "run_model", "inputs/expected_output.bin"):
        assert f"fp32-orin/{f}" in names and f"`{f}`" in readme, f
    assert runtime.elf_machine(root / "lib" / "libtvm_runtime_cuda.so") == "aarch64"
    assert "./run.sh --cpu" in readme and "max abs diff <= 0.0001" in readme
    env = dict(os.environ, SE_EMULATOR="qemu-aarch64 -L /usr/aarch64-linux-gnu")
    res = subprocess.run(["sh", str(root / "run.sh"), "--cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "output matches" in res.stdout, res.stdout + res.stderr
    res = subprocess.run(["sh", str(root / "run.sh")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 4 and "libtvm_runtime_cuda.so" in res.stderr and "libcudart.so" in res.stderr, \
        res.stdout + res.stderr


@needs_nvcc
def test_runner_device_cuda_loads_the_cuda_plugin_and_reaches_the_device(tmp_path):
    """x86 runner, x86 CUDA library, the libcuda stub standing in for a driver: with --device cuda the CUDA
    module loads and the VM asks the CUDA runtime for memory (which says there is no driver); without it the
    runner says it is a CUDA library. Proves the plugin loading a board run depends on, short of a GPU."""
    import shutil

    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from squeezeedge.deploy.cuda import enable_nvcc_codegen, gpu_schedule

    env = enable_nvcc_codegen()

    @tvm.script.ir_module
    class AddOne:
        @R.function
        def main(x: R.Tensor((1, 8), "int64")) -> R.Tensor((1, 8), "float32"):
            with R.dataflow():
                y = R.add(R.astype(x, "float32"), R.const(1.0, "float32"))
                R.output(y)
            return y

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_87"}, host="llvm")
    with target:
        relax.build(gpu_schedule(relax.get_pipeline("zero")(AddOne), target), target).export_library(
            str(tmp_path / "model.so"))
    rt = deploy.runtime_dir("x86_64")
    (tmp_path / "lib").mkdir()
    shutil.copy(deploy.runner("x86_64"), tmp_path / "run_model")
    for name in (*deploy.RUNTIME_LIBS, deploy.CUDA_PLUGIN):
        (tmp_path / "lib" / name).symlink_to(rt / name)
    np.arange(8, dtype=np.int64).tofile(tmp_path / "x.bin")
    ld = ":".join(str(Path(env[lib]).parent) for lib in ("stub", "cudart"))
    cmd = [str(tmp_path / "run_model"), str(tmp_path / "model.so"), str(tmp_path / "out.bin"), "1",
           f"x:int64:1x8:{tmp_path / 'x.bin'}"]
    res = subprocess.run(cmd[:1] + ["--device", "cuda"] + cmd[1:], capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=ld))
    assert res.returncode == 4 and "CUDA" in res.stderr and "not registered" not in res.stderr, res.stderr
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 4 and "a CUDA library: run it with --device cuda" in res.stderr, res.stderr


@needs_nvcc
def test_arch_this_nvcc_cannot_compile_is_named(tiny_export, tmp_path):
    """CUDA 13's nvcc dropped sm_72 (Jetson Xavier NX); with it installed the build says so up front."""
    import subprocess

    archs = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True).stdout.split()
    if "compute_72" in archs:
        pytest.skip("this nvcc still compiles sm_72")
    res = cli("build", tiny_export, "--target", "jetson-xavier-nx", "--out", tmp_path / "o")
    assert res.exit_code == 9 and "cannot compile for sm_72" in res.stderr and "12.x" in res.stderr
    assert "oldest it knows: sm_75" in res.stderr or "compute_75" not in archs


def test_missing_nvcc_names_the_package(tiny_export, tmp_path, monkeypatch):
    from squeezeedge.deploy import cuda

    monkeypatch.setattr(cuda.shutil, "which", lambda t: None)
    monkeypatch.setattr(cuda, "_nvcc_candidates", lambda: [tmp_path / "nvcc"])
    res = cli("build", tiny_export, "--target", "jetson-orin-nano", "--out", tmp_path / "o")
    assert res.exit_code == 9 and "nvcc" in res.stderr and "pip install \"nvidia-cuda-nvcc==13.*\"" in res.stderr


VECTOR_MACS = {
    "x86_64": ("vfmadd", "vpdpbusd", "vpdpwssd", "vpmaddwd", "vpmaddubsw", "vpmulld"),  # vpdpwssd: LLVM on VNNI
    "aarch64": ("fmla", "mla", "smlal", "umlal", "sdot", "udot"),
}
OBJDUMP = {"x86_64": "objdump", "aarch64": "aarch64-linux-gnu-objdump"}


def mac_kernel_instructions(lib) -> dict[str, set[str]]:
    """The vector multiply-accumulate mnemonics in each multiply-accumulate kernel of a library (its
    conv1d/matmul/packed-dot functions and their parallel bodies), read from the disassembly."""
    import re

    arch = runtime.elf_machine(lib)
    asm = subprocess.run([OBJDUMP[arch], "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    kernels: dict[str, set[str]] = {}
    current = None
    for line in asm.splitlines():
        if m := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
            name = m.group(1).split("_compute_")[0]
            is_mac = any(k in name for k in ("conv1d", "matmul", "vnni_dot", "arm_sdot", "avx2_")) \
                and not name.startswith("__")
            current = kernels.setdefault(name, set()) if is_mac else None
        elif current is not None and (parts := line.split("\t")) and len(parts) >= 2:
            op = parts[1].split()[0] if parts[1].split() else ""
            if op.startswith(VECTOR_MACS[arch]) and (arch == "aarch64" or "mm" in line):
                current.add(op)
    return kernels


@pytest.mark.parametrize("target, precision", CASES + [("host", "fp32"), ("host", "int8")])
def test_every_multiply_accumulate_kernel_is_vectorized(cross_libs, fp32_lib, int8_lib, target, precision):
    """No tuning database: every conv1d/matmul kernel of every target compiles to vector multiply-adds
    (FMA / vpdpbusd on x86; fmla, mla/smlal/umlal on the Pi 4, sdot where packed), read from the library's
    disassembly, not one left scalar."""
    lib = {("host", "fp32"): fp32_lib, ("host", "int8"): int8_lib}.get((target, precision)) \
        or cross_libs[(target, precision)]
    kernels = mac_kernel_instructions(lib / "model.so")
    assert len(kernels) >= 6, sorted(kernels)
    scalar = sorted(k for k, ops in kernels.items() if not ops)
    assert not scalar, f"{len(scalar)} of {len(kernels)} MAC kernels without vector MACs: {scalar[:3]}"


def test_int8_matmul_large_enough_for_tensor_cores_compiles_for_jetson():
    """An int8 -> int32 matmul with every extent over 64 (the full-size model's layers; the tiny model's stay
    under dlight's tensor-core threshold) compiles for sm_87: dlight's int8 tensor-core schedule, which
    TVM 0.27's InjectSoftwarePipeline fails on ("fragment_info_"), is not taken."""
    import tvm
    from tvm import relax

    from squeezeedge.deploy.cuda import enable_nvcc_codegen, gpu_schedule
    from squeezeedge.lowering.pipeline import fuse
    from squeezeedge.targets import load_target

    target = load_target("jetson-orin-nano").tvm_target()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 128, 256), "int8"))
    w = relax.const(np.random.default_rng(0).integers(-127, 128, (256, 256)).astype(np.int8))
    with bb.function("main", [x]):
        bb.emit_func_output(relax.op.matmul(x, w, out_dtype="int32"))
    mod = gpu_schedule(fuse(bb.get(), target), target)
    enable_nvcc_codegen()
    with target:
        ex = tvm.compile(mod, target=target)
    assert ex is not None
