"""CUDA libraries for Jetson, compiled here with no GPU and no NVIDIA driver.

TVM emits CUDA C and, when its CUDA runtime plugin (libtvm_runtime_cuda.so) is loaded, compiles it
at build time through the ``tvm_callback_cuda_compile`` hook (nvcc -> fatbin) and embeds the binary
in the library. The plugin links libcuda.so.1, which only the NVIDIA driver provides; without it the
library would carry CUDA source to be compiled on the board at load time by a Python callback. So a
stand-in libcuda.so.1 (runner/libcuda_stub.c: every call says "no device") is built and preloaded,
the plugin is loaded, and nvcc does the work. Kernels get dlight's default GPU schedules.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from pathlib import Path

from squeezeedge.errors import ToolchainError

STUB_SRC = Path(__file__).with_name("runner") / "libcuda_stub.c"
CUDART = "libcudart.so.13"
PIP_CUDA = 'pip install "nvidia-cuda-nvcc==13.*" "nvidia-cuda-runtime==13.*"'  # nvcc + libcudart.so.13
FATBIN_MAGIC = 0xBA55ED50
_enabled: dict = {}


def nvcc() -> Path:
    """nvcc from PATH, else from :func:`_nvcc_candidates`."""
    found = shutil.which("nvcc") or next((str(p) for p in _nvcc_candidates() if p.is_file()), None)
    if not found:
        raise ToolchainError(f"CUDA targets compile their kernels with nvcc, which is not installed ({PIP_CUDA}, "
                             "or NVIDIA's CUDA 13 toolkit)")
    return Path(found).resolve()


def _nvcc_candidates() -> list[Path]:
    """$CUDA_HOME, NVIDIA's PyPI wheels (site-packages/nvidia/cu13), /usr/local/cuda."""
    import sys

    home = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    return [*home, *(Path(d) / "nvidia" / "cu13" / "bin" / "nvcc" for d in sys.path if d),
            Path("/usr/local/cuda/bin/nvcc")]


def check_arch(arch: str) -> None:
    """ToolchainError unless this nvcc can compile for ``arch`` (CUDA 13 dropped sm_72, Jetson Xavier)."""
    compiler = nvcc()
    res = subprocess.run([str(compiler), "--list-gpu-arch"], capture_output=True, text=True)
    archs = {a.replace("compute_", "sm_") for a in res.stdout.split()}
    if res.returncode == 0 and archs and arch not in archs:
        version = subprocess.run([str(compiler), "--version"], capture_output=True, text=True).stdout.strip()
        release = next((ln.strip() for ln in version.splitlines() if "release" in ln), "unknown version")
        oldest = min(archs, key=lambda a: int("".join(c for c in a[3:] if c.isdigit()) or 0))
        raise ToolchainError(f"this nvcc ({release}) cannot compile for {arch} (oldest it knows: {oldest}); "
                             f"install a CUDA toolkit that still supports {arch} (12.x for sm_72) "
                             "and put its nvcc first on PATH")


def enable_nvcc_codegen() -> dict:
    """Make TVM compile CUDA kernels to a fatbin with nvcc at build time (idempotent)."""
    if _enabled:
        return _enabled
    from squeezeedge.artifact import sha256_file
    from squeezeedge.deploy.bundle import RUNTIME_HOME

    compiler = nvcc()
    homes = [compiler.parent.parent, Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")), Path("/usr/local/cuda")]
    # TVM 0.27's CUDA plugin links libcudart.so.13: a CUDA 12 toolkit's runtime cannot stand in for it
    cudart = next((p for h in homes for lib in ("lib64", "lib") for p in sorted((h / lib).glob(CUDART))), None)
    if cudart is None:
        raise ToolchainError(f"no {CUDART} (CUDA 13's runtime, which TVM's CUDA plugin links) in "
                             f"{', '.join(f'{h}/lib64, {h}/lib' for h in homes)}: {PIP_CUDA}, or set CUDA_HOME")
    stub_dir = RUNTIME_HOME / "cuda-stub" / sha256_file(STUB_SRC)[:12]
    stub = stub_dir / "libcuda.so.1"
    if not stub.is_file():
        stub_dir.mkdir(parents=True, exist_ok=True)
        part = stub_dir / f".libcuda.part-{os.getpid()}"
        res = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o", str(part),
                              str(STUB_SRC)], capture_output=True, text=True)
        if res.returncode != 0:
            raise ToolchainError(f"cannot build the libcuda stub with gcc: {res.stderr.strip()[:200]}")
        os.replace(part, stub)
    import tvm
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    ctypes.CDLL(str(cudart), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", mode="RTLD_LOCAL",
            extra_lib_paths=[Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent])
    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    if shutil.which("nvcc") is None:  # TVM runs "nvcc"; nvcc() took PATH's when there is one
        os.environ["PATH"] = f"{compiler.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    _enabled.update(nvcc=str(compiler), cudart=str(cudart), stub=str(stub), tvm=tvm.__version__)
    return _enabled


def gpu_schedule(mod, tvm_target):
    """dlight's default GPU schedules for every kernel (matmul, GEMV, reductions, fallback), int8 matmuls
    without dlight's int8 tensor-core path (:func:`_matmul_rule`)."""
    from tvm.s_tir import dlight as dl

    with tvm_target:
        return dl.ApplyDefaultSchedule(_matmul_rule(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                       dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)


def _matmul_rule():
    """dl.gpu.Matmul with its int8 -> int32 tensor-core schedule (MatmulInt8Tensorization, taken on sm >= 70
    when every extent is over 64: the full-size model's layers) turned off: TVM 0.27's
    InjectSoftwarePipeline then fails ("Check failed: (it != fragment_info_.end())", GetWmmaFragmentSize)
    and the whole Jetson int8 build with it. Those matmuls get dlight's plain matmul schedule instead."""
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu import matmul

    class Matmul(dl.gpu.Matmul):
        def apply(self, func, target, tunable):
            orig = matmul.MatmulInt8Tensorization.apply
            matmul.MatmulInt8Tensorization.apply = lambda *args, **kwargs: None  # Matmul falls through
            try:
                return super().apply(func, target, tunable)
            finally:
                matmul.MatmulInt8Tensorization.apply = orig

    return Matmul()


def fatbin_cubins(path: Path) -> list[dict]:
    """The device binaries embedded in a library: [{"kind": "cubin"|"ptx", "arch": "sm_87", "bytes": N}].

    Reads NVIDIA fatbin containers (magic 0xBA55ED50) straight from the file: each entry header holds
    its kind (1 PTX, 2 ELF cubin), header size, payload size and, at offset 28, the SM number."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    magic = FATBIN_MAGIC.to_bytes(4, "little")
    while (pos := data.find(magic, pos)) >= 0:
        _, _, hsize, fat = struct.unpack_from("<IHHQ", data, pos)
        off, end = pos + hsize, pos + hsize + fat
        while off + 32 <= min(end, len(data)):
            kind, _, ehsize, payload = struct.unpack_from("<HHIQ", data, off)
            arch = struct.unpack_from("<I", data, off + 28)[0]
            if kind not in (1, 2) or ehsize == 0:
                break
            out.append({"kind": "ptx" if kind == 1 else "cubin", "arch": f"sm_{arch}", "bytes": payload})
            off += ehsize + payload
        pos = max(end, pos + 4)
    return out


def describe(path: Path, arch: str) -> dict:
    bins = fatbin_cubins(path)
    return {"arch": arch, "device_binaries": bins, "compiled_with": _enabled.get("nvcc"),
            "ran": "not run: no GPU on the build machine"}
