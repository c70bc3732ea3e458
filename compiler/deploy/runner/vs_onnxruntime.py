"""On the board: the bundle's library and onnxruntime, timed on the same input, threads and core.

    ./run.sh --vs-onnxruntime MODEL.onnx [ROUNDS]

Runs `run_model` (the library, ROUNDS runs after one warm-up) and onnxruntime's CPU session on
MODEL.onnx (same example input, same thread count, one warm-up) one after the other, and prints each
median, their ratio and onnxruntime's output agreement with the library's. Needs python3 with numpy and
onnxruntime on the board (`pip install onnxruntime numpy`). Runs with the bundle's own files only.
"""

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np


def main() -> int:
    if len(sys.argv) < 2 or not os.path.isfile(sys.argv[1]):
        print("usage: ./run.sh --vs-onnxruntime MODEL.onnx [ROUNDS]  (MODEL.onnx: the model file onnxruntime "
              "runs; README.md names the one this library was built from)", file=sys.stderr)
        return 2
    model, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed for this python3: pip install onnxruntime numpy", file=sys.stderr)
        return 4
    meta = json.load(open("metadata.json"))
    threads = int(os.environ.get("TVM_NUM_THREADS") or meta["target"].get("threads") or 0) or os.cpu_count()
    threads = min(threads, len(os.sched_getaffinity(0)))
    feed = {i["name"]: np.fromfile(f"inputs/{i['name']}.bin", dtype=i["dtype"]).reshape(i["shape"])
            for i in meta["inputs"]}
    specs = [f"{i['name']}:{i['dtype']}:{'x'.join(map(str, i['shape']))}:inputs/{i['name']}.bin" for i in meta["inputs"]]
    lengths = ["--lengths", ",".join(map(str, meta["lengths"]))] if meta.get("lengths") else []
    cmd = [*shlex.split(os.environ.get("SE_EMULATOR", "")), "./run_model", "--threads", str(threads), *lengths,
           "./model.so", "vs-out.bin", str(rounds + 1), *specs]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"run_model failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return 4
    ours = [float(m) for m in re.findall(r"^run \d+: ([0-9.]+) ms$", res.stdout, re.M)][1:]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    ort_feed = {n: feed[n] for n in names}
    out = sess.run(None, ort_feed)[0]  # warm-up
    theirs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = sess.run(None, ort_feed)[0]
        theirs.append((time.perf_counter() - t0) * 1e3)
    lib_out = np.fromfile("vs-out.bin", dtype=np.float32).ravel()
    a, b = lib_out.astype(np.float64), np.asarray(out, dtype=np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a.shape == b.shape and a.any() and b.any() else float("nan")
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    tokens = meta["inputs"][0]["shape"][-1]
    print(f"squeezeedge {meta['precision']} ({meta['target']['name']}): median {m_ours:.3f} ms over {len(ours)} runs")
    print(f"onnxruntime {ort.__version__} ({os.path.basename(model)}): median {m_theirs:.3f} ms over {len(theirs)} runs")
    print(f"ratio (library / onnxruntime) at {tokens} tokens, {threads} thread(s): {m_ours / m_theirs:.2f}x; "
          f"output cosine {cos:.5f}")
    if os.environ.get("SE_EMULATOR"):
        print("(under an emulator: these are emulated times, not the board's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
