"""A board's Python with no board: Debian's arm64 CPython and PyPI's aarch64 wheels, run under qemu-user.

What a board user would run instead of a squeezeedge library (onnxruntime's and LiteRT's own aarch64
wheels) runs here on the board's own core, so that its instructions can be counted beside the
library's (compiler/measure/emulate.py); so does squeezeedge's own board runtime (numpy, TVM's
runtime, tokenizers: a bundle answering text from Python, tested). One directory, made once by
:func:`setup` and cacheable by CI:

    HOME/sysroot/       Debian arm64 packages (python3.11 and the C libraries it and the wheels load)
    HOME/site/          the aarch64 wheels, unpacked (PYTHONPATH)
    HOME/cores/CPU/     per emulated core: the sysroot's folders linked, and a proc/cpuinfo that names
                        that core (qemu-user looks paths up under -L first: onnxruntime's cpuinfo
                        otherwise parses this x86 host's /proc/cpuinfo and crashes at import)
    count_insns-*.so    the instruction-counting qemu plugin, compiled by this machine's gcc
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import sha256_file
from squeezeedge.deploy.bundle import RUNTIME_HOME, need
from squeezeedge.errors import ToolchainError
from squeezeedge.runtime import BOARD_PACKAGES

HOME = Path(os.environ.get("SQUEEZEEDGE_BOARD_PYTHON", RUNTIME_HOME.parent / "board-python"))
PLUGIN_SRC = Path(__file__).with_name("runner") / "count_insns.c"
# Debian 12's arm64 packages: the interpreter and what it and the wheels' native code link
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libffi8", "libssl3", "zlib1g",
        "libexpat1", "libbz2-1.0", "liblzma5", "libc6", "libstdc++6", "libgcc-s1", "libsqlite3-0", "libuuid1",
        "libgomp1")
# ai-edge-litert 1.4.0 is the newest release with a manylinux aarch64 wheel; onnxruntime and numpy are the
# host's own releases (the bench's), the rest what they import
LITERT = "ai-edge-litert==1.4.0"
PURE = ("flatbuffers==25.12.19", "protobuf==7.36.2", "coloredlogs==15.0.1", "humanfriendly==10.0", "packaging==26.4",
        "backports.strenum==1.2.8", "tqdm==4.70.1", "typing-extensions==4.16.0")
PYTHON = "usr/bin/python3.11"
# /proc/cpuinfo as each core's Linux prints it (implementer, part, Features: what cpuinfo libraries read)
_V80 = "fp asimd evtstrm crc32 cpuid"
_V82 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
CORES = {"cortex-a35": ("0xd04", _V80), "cortex-a53": ("0xd03", _V80), "cortex-a57": ("0xd07", _V80),
         "cortex-a72": ("0xd08", _V80), "cortex-a76": ("0xd0b", _V82), "neoverse-n1": ("0xd0c", _V82)}
STAMP = ".complete"


def wheels() -> list[str]:
    """The peers' wheels, and squeezeedge's board runtime (squeezeedge.runtime.BOARD_PACKAGES and TVM's
    ml-dtypes), at this host's versions."""
    host = ("onnxruntime", *BOARD_PACKAGES, "ml-dtypes")
    return [*(f"{name}=={metadata.version(name)}" for name in host), LITERT, *PURE]


def ready() -> bool:
    return (HOME / STAMP).is_file() and (HOME / STAMP).read_text().split() == wheels()


def setup(force: bool = False) -> Path:
    """Make HOME (idempotent): the Debian arm64 packages, the aarch64 wheels and the counting plugin.
    Needs apt (arm64 added as a dpkg architecture: done here as root) and PyPI."""
    plugin()
    if ready() and not force:
        return HOME
    need("qemu-aarch64")
    HOME.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HOME) as tmp:
        tmp = Path(tmp)
        with console.step(f"fetching Debian's arm64 CPython ({len(DEBS)} packages)"):
            _debs(tmp / "debs")
            for deb in sorted((tmp / "debs").glob("*.deb")):
                _run(["dpkg-deb", "-x", str(deb), str(tmp / "sysroot")], f"cannot unpack {deb.name}")
        with console.step(f"fetching {len(wheels())} aarch64 wheels from PyPI"):
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                  "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
                  "--platform", "manylinux2014_aarch64", "--python-version", "3.11", "-d", str(tmp / "wheels"),
                  *wheels()], "cannot download the aarch64 wheels")
            for whl in sorted((tmp / "wheels").glob("*.whl")):
                with zipfile.ZipFile(whl) as z:
                    z.extractall(tmp / "site")
        for name in ("sysroot", "site", "cores"):
            shutil.rmtree(HOME / name, ignore_errors=True)
        for name in ("sysroot", "site"):
            os.replace(tmp / name, HOME / name)
    (HOME / STAMP).write_text("\n".join(wheels()) + "\n")
    return HOME


def _debs(dest: Path) -> None:
    dest.mkdir(parents=True)
    if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                                     text=True).stdout.split():
        if os.geteuid() != 0:
            raise ToolchainError("the board's Python needs Debian's arm64 packages: run as root, or first "
                                 "'dpkg --add-architecture arm64 && apt-get update'")
        _run(["dpkg", "--add-architecture", "arm64"], "cannot add the arm64 architecture")
        _run(["apt-get", "update", "-q"], "apt-get update failed")
    res = subprocess.run(["apt-get", "download", *(f"{d}:arm64" for d in DEBS)], cwd=dest, capture_output=True,
                         text=True)
    if res.returncode != 0 and os.geteuid() == 0:  # lists without arm64 yet
        _run(["apt-get", "update", "-q"], "apt-get update failed")
        res = subprocess.run(["apt-get", "download", *(f"{d}:arm64" for d in DEBS)], cwd=dest, capture_output=True,
                             text=True)
    if res.returncode != 0:
        raise ToolchainError(f"apt-get download of the arm64 packages failed: {_last(res.stderr)}")


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ToolchainError(f"{what}: {_last(res.stderr or res.stdout)}")


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("W:")]
    return (lines[-1] if lines else "no output")[:200]


def plugin() -> Path:
    """The instruction-counting qemu plugin (count_insns.c), compiled once per source version by gcc."""
    exe = HOME / f"count_insns-{sha256_file(PLUGIN_SRC)[:12]}.so"
    if exe.is_file():
        return exe
    gcc = need("gcc")
    HOME.mkdir(parents=True, exist_ok=True)
    part = exe.with_name(f".{exe.name}.part-{os.getpid()}")
    _run([gcc, "-shared", "-fPIC", "-O2", "-o", str(part), str(PLUGIN_SRC)], f"{gcc} could not build {PLUGIN_SRC.name}")
    os.replace(part, exe)
    return exe


def counter_args(log: Path) -> list[str]:
    """qemu-user options that load the instruction counter, its lines written to ``log``."""
    return ["-plugin", str(plugin()), "-d", "plugin", "-D", str(log)]


def core_root(cpu: str) -> Path:
    """A -L root for qemu emulating ``cpu``: the sysroot's folders plus that core's proc/cpuinfo."""
    if cpu not in CORES:
        raise ToolchainError(f"no /proc/cpuinfo is known for qemu core {cpu!r} (known: {', '.join(CORES)})")
    if not ready():
        raise ToolchainError(f"the board's Python is not set up in {HOME}: run 'squeezeedge setup-emulation'")
    root = HOME / "cores" / cpu
    if not (root / "proc" / "cpuinfo").is_file():
        (root / "proc").mkdir(parents=True, exist_ok=True)
        for entry in (HOME / "sysroot").iterdir():
            if not (root / entry.name).exists():
                (root / entry.name).symlink_to(entry)
        part, features = CORES[cpu]
        (root / "proc" / ".cpuinfo.part").write_text(
            "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                    f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n"
                    for i in range(4)))
        os.replace(root / "proc" / ".cpuinfo.part", root / "proc" / "cpuinfo")
    return root


def python_command(cpu: str, counting: Path | None = None) -> tuple[list[str], dict]:
    """(command prefix, environment) that runs the aarch64 CPython on ``cpu`` under qemu-user; with
    ``counting`` (a log path) the instruction counter is loaded and writes there."""
    root = core_root(cpu)
    # no address-space randomisation (setarch -R) and a fixed hash seed: the same instructions every run
    cmd = [*(["setarch", "-R"] if shutil.which("setarch") else []), need("qemu-aarch64"), "-cpu", cpu, "-L", str(root)]
    if counting is not None:
        cmd += counter_args(counting)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(HOME / "site"),
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    return [*cmd, str(root / PYTHON)], env


def main() -> int:
    """``python -m squeezeedge.deploy.board_python``: set up (or check) HOME; prints its path."""
    try:
        print(setup(force="--force" in sys.argv))
    except ToolchainError as exc:
        print(f"board python: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
