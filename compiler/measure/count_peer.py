"""Run one peer runtime on a list of inputs, a counter marker around each run (the board's Python runs this).

Executed by the aarch64 CPython under qemu-user with the instruction counter
(compiler/deploy/runner/count_insns.c; set up by compiler/deploy/board_python.py). Imports only numpy
and the runtime itself: none of squeezeedge, which the board's Python does not have.

    python count_peer.py JOB.json

JOB: {"runtime": "onnxruntime" | "litert", "model": PATH, "inputs": NPZ, "count": N, "names": [input names],
      "litert_inputs": [signature input names, in the order of names]}
NPZ holds "<i>.<name>" arrays. Input i runs once, on one thread, between markers 2i and 2i+1.
"""

import ctypes
import json
import sys

import numpy as np

MARK_SYSCALL = 0x5345  # count_insns.c
_libc = ctypes.CDLL(None, use_errno=True)


def mark(tag: int) -> None:
    _libc.syscall(ctypes.c_long(MARK_SYSCALL), ctypes.c_long(tag))


def onnxruntime_session(job):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(job["model"], opts, providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(None, feed)[0]


def litert_session(job):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(job["model"], num_threads=1)
    sig = next(iter(interp.get_signature_list()))
    run = interp.get_signature_runner(sig)
    scale, zero = interp.get_output_details()[0]["quantization"]
    arg_names = job["litert_inputs"]

    def fn(feed):
        out = next(iter(run(**{a: feed[n].astype(np.int32) for a, n in zip(arg_names, job["names"])}).values()))
        return (out.astype(np.float32) - zero) * scale if scale else out

    return fn


def main() -> int:
    job = json.load(open(sys.argv[1]))
    data = np.load(job["inputs"])
    feeds = [{n: data[f"{i}.{n}"] for n in job["names"]} for i in range(job["count"])]
    fn = {"onnxruntime": onnxruntime_session, "litert": litert_session}[job["runtime"]](job)
    for i, feed in enumerate(feeds):
        mark(2 * i)
        fn(feed)
        mark(2 * i + 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
