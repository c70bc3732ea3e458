"""Shared fixtures: one tiny export per test session (tests reuse it rather than re-exporting)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from squeezeedge.cli import main

TINY_SEQ = 32


def _has_nvcc() -> bool:
    from squeezeedge.deploy.cuda import nvcc
    from squeezeedge.errors import ToolchainError

    try:
        return bool(nvcc())
    except ToolchainError:
        return False


needs_nvcc = pytest.mark.skipif(not _has_nvcc(), reason="no CUDA toolkit (nvcc) on this machine")


def cli(*args: str, **kw):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr, output)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny-export"
    res = cli("-q", "export", "--model", "squeezebert-tiny", "--seq-len", TINY_SEQ, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def manifest(path: Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


FAST_Q = ["--num-samples", "16", "--num-heldout", "16"]


@pytest.fixture(scope="session")
def tiny_int8(tiny_export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "tiny-int8"
    res = cli("-q", "quantize", tiny_export, *FAST_Q, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def _quantized(tiny_export, tmp_path_factory, target: str, name: str) -> Path:
    out = tmp_path_factory.mktemp("q") / name
    res = cli("-q", "quantize", tiny_export, "--target", target, *FAST_Q, "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def tiny_int8_s8(tiny_export, tmp_path_factory) -> Path:
    """Quantized for the Pi 5: signed 8-bit activations, which its sdot instruction multiplies."""
    return _quantized(tiny_export, tmp_path_factory, "rpi5", "tiny-int8-rpi5")


@pytest.fixture(scope="session")
def tiny_int8_rpi4(tiny_export, tmp_path_factory) -> Path:
    """Quantized for the Pi 4: s8 activations with calibrated zero points, 7-bit weights."""
    return _quantized(tiny_export, tmp_path_factory, "rpi4", "tiny-int8-rpi4")


def _host_lib(src: Path, out: Path) -> Path:
    res = cli("-q", "build", src, "--target", "host", "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def fp32_lib(tiny_export, tmp_path_factory):
    return _host_lib(tiny_export, tmp_path_factory.mktemp("b") / "fp32-host")


@pytest.fixture(scope="session")
def int8_lib(tiny_int8, tmp_path_factory):
    return _host_lib(tiny_int8, tmp_path_factory.mktemp("b") / "int8-host")


CASES = [("rpi4", "fp32"), ("rpi4", "int8"), ("rpi5", "fp32"), ("rpi5", "int8")]


@pytest.fixture(scope="session")
def cross_libs(tiny_export, tiny_int8, tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    libs = {}
    for target, precision in CASES:
        out = root / f"{precision}-{target}"
        src = tiny_int8 if precision == "int8" else tiny_export
        extra = ["--bundle"] if (target, precision) == ("rpi5", "int8") else []
        res = cli("-q", "build", src, "--target", target, *extra, "--out", out)
        assert res.exit_code == 0, res.output
        libs[(target, precision)] = out
    return libs
