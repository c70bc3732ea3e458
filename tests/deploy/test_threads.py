"""TVM's thread pool as every way a library runs sets it (issue 19): the target's threads, at most the CPUs
the process may use, a spin count of 1000, unless the user says otherwise. TVM alone takes half the
logical CPUs on x86 (one thread on a 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from squeezeedge.deploy import bundle as deploy
from squeezeedge.runtime import random_inputs

from ..conftest import TINY_SEQ

PROBE = """
import os, sys
if len(sys.argv) > 2:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import squeezeedge.runtime as rt
import tvm
m = rt.load(sys.argv[1])
print(m.pool["threads"], m.pool["spin_count"], tvm.get_global_func("runtime.NumThreads")(),
      os.environ["TVM_THREAD_POOL_SPIN_COUNT"])
"""


def _probe(lib, *extra, env=None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")} | (env or {})
    res = subprocess.run([sys.executable, "-c", PROBE, str(lib), *extra], capture_output=True, text=True,
                         timeout=300, env=clean)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_load_sets_the_pool_to_the_usable_cpus(fp32_lib):
    meta = json.loads((fp32_lib / "metadata.json").read_text())
    assert meta["target"]["threads"] == 0 and meta["thread_pool"]["spin_count"] == 1000  # host: all CPUs
    cpus = len(os.sched_getaffinity(0))
    assert _probe(fp32_lib) == [str(cpus), "1000", str(cpus), "1000"]
    assert _probe(fp32_lib, "one-cpu") == ["1", "1000", "1", "1000"]  # capped at the affinity mask
    assert _probe(fp32_lib, env={"TVM_NUM_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "7"}) == ["1", "7", "1", "7"]


def test_deploy_runner_sets_the_pool(fp32_lib):
    meta = json.loads((fp32_lib / "metadata.json").read_text())
    feed = random_inputs(meta["vocab_size"], 2, 1, TINY_SEQ, 3)
    exe = deploy.runner(os.uname().machine)
    specs = []
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in deploy.RUNTIME_LIBS:
            (tmp / name).symlink_to(deploy.runtime_dir(os.uname().machine) / name)
        for spec in meta["inputs"]:
            np.ascontiguousarray(feed[spec["name"]], dtype=spec["dtype"]).tofile(tmp / f"{spec['name']}.bin")
            specs.append(f"{spec['name']}:{spec['dtype']}:1x{TINY_SEQ}:{tmp / (spec['name'] + '.bin')}")
        (tmp / "run_model").symlink_to(exe)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}

        def run(*threads, env=None):
            res = subprocess.run([str(tmp / "run_model"), *threads, str(fp32_lib / "model.so"), str(tmp / "o.bin"),
                                  "1", *specs], capture_output=True, text=True, timeout=300, env=clean | (env or {}))
            assert res.returncode == 0, res.stderr
            return res.stderr.splitlines()[0]

        cpus = len(os.sched_getaffinity(0))
        assert run() == f"threads: {cpus}"
        assert run("--threads", "1") == "threads: 1"
        assert run("--threads", "64") == f"threads: {cpus}"  # capped
        assert run("--threads", "2", env={"TVM_NUM_THREADS": "1"}) == "threads: 1"  # the user's word wins
