"""The wheel carries everything squeezeedge reads at run time: installed with pip --no-deps --target into
a scratch directory and run from outside the clone, it lists its boards, exports, quantizes on the
shipped corpus and builds a bundle from the installed files alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # the venv's setuptools, no build isolation: no network needed
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, capture_output=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("squeezeedge-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"),
                    str(wheel)], check=True, capture_output=True, cwd=tmp)
    return wheel, tmp / "site", tmp / "elsewhere"


def _se(site: Path, cwd: Path, *args, module: bool = True) -> subprocess.CompletedProcess:
    """squeezeedge (or python with module=False) from the installed copy, run in ``cwd``, outside the clone."""
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy first: never the clone's sources
    env.pop("SQUEEZEEDGE_TARGETS_DIR", None)
    return subprocess.run([sys.executable, *(["-m", "squeezeedge"] if module else []), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env)


def test_wheel_holds_the_run_time_data(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("squeezeedge/measure/bench_schema.json", "squeezeedge/deploy/runner/run_model.cc", "squeezeedge/deploy/runner/rpc_board.cc",
                 "squeezeedge/data/targets/rpi4.toml", "squeezeedge/data/calibration/sentences.txt",
                 "squeezeedge/data/calibration/PROVENANCE.md", "squeezeedge/data/databases/x86-avx512-int8/manifest.json"):
        assert must in names, must
    shipped = {p.name for p in (REPO / "targets").glob("*.toml")}
    assert {Path(n).name for n in names if n.startswith("squeezeedge/data/targets/")} == shipped


def test_installed_wheel_runs_the_flow_outside_the_clone(installed):
    from squeezeedge.artifact import sha256_file

    _, site, elsewhere = installed
    res = _se(site, elsewhere, "-c", "import squeezeedge, squeezeedge.resources as r; print(squeezeedge.__file__); "
                                     "print(r.data_dir('targets')); print(r.data_dir('calibration'))", module=False)
    assert res.stdout.split() and all(p.startswith(str(site)) for p in res.stdout.split()), res.stdout + res.stderr

    res = _se(site, elsewhere, "--json", "targets")
    assert res.returncode == 0, res.stderr
    assert {"host", "rpi4", "rpi5", "jetson-orin-nano", "x86-avx512"} <= {t["name"] for t in json.loads(res.stdout)["targets"]}
    res = _se(site, elsewhere, "-q", "export", "--model", "squeezebert-tiny", "--seq-len", "32", "--out", "export")
    assert res.returncode == 0, res.stderr
    res = _se(site, elsewhere, "-q", "--json", "quantize", "export", "--num-samples", "16", "--num-heldout", "16",
              "--out", "int8")
    assert res.returncode == 0, res.stderr
    # calibrated on the shipped corpus, read from the installed package
    assert json.loads(res.stdout)["manifest"]["config"]["data_sha256"] == \
        sha256_file(site / "squeezeedge" / "data" / "calibration" / "sentences.txt")
    res = _se(site, elsewhere, "-q", "build", "int8", "--target", "host", "--bundle", "--out", "lib")
    assert res.returncode == 0, res.stderr
    with tarfile.open(elsewhere / "lib.tar.gz") as tar:
        assert {"model.so", "run_model"} <= {Path(m.name).name for m in tar.getmembers()}


def test_sdist_carries_the_data_a_wheel_is_built_from(tmp_path):
    from setuptools import build_meta

    old = os.getcwd()
    os.chdir(REPO)
    try:
        name = build_meta.build_sdist(str(tmp_path))
    finally:
        os.chdir(old)
    with tarfile.open(tmp_path / name) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    for must in ("targets/rpi5.toml", "calibration/sentences.txt", "results/databases/x86-avx2-int8/manifest.json",
                 "compiler/deploy/runner/run_model.cc", "compiler/measure/bench_schema.json"):
        assert must in members, must
