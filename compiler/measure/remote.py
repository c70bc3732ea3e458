"""Run built libraries on a board behind a TVM RPC tracker: the Relax VM over RPC (set_input +
invoke_stateful), timed on the board by TVM's time_evaluator so the network is not in the numbers."""

from __future__ import annotations

from pathlib import Path

from squeezeedge.measure.baselines import Runner
from squeezeedge.errors import ArtifactError, InputError
from squeezeedge.deploy.fleet import check_key, parse_addr
from squeezeedge.runtime import is_cuda_library, load_metadata


def remote_runners(lib_dirs: list[Path], tracker: str, key: str, feed: dict, threads: int | None = None,
                   timeout_s: int = 600) -> list[Runner]:
    """Runners timing each library on the board, its TVM pool set to ``threads`` (default: the first
    library's target threads, 0 = all the board's cores) with TVM's own runtime.config_threadpool: the
    board's server process has TVM's defaults, half the cores on x86."""
    import numpy as np
    import tvm
    from tvm import relax, rpc

    check_key(tracker, key)
    host, port = parse_addr(tracker)
    try:
        sess = rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=timeout_s)
    except Exception as exc:
        raise InputError(f"no board under key '{key}' answered at {tracker}: {str(exc).splitlines()[0][:160]}") \
            from None
    cpu = sess.cpu()
    if threads is None:
        threads = load_metadata(Path(lib_dirs[0]))[0]["target"].get("threads") or 0
    try:
        sess.get_function("runtime.config_threadpool")(1, threads)  # 1: TVM's "big cores" mode, all alike here
    except Exception:  # noqa: BLE001 (a runtime without it keeps its own defaults; the report says which)
        threads = None
    runners = []
    for i, d in enumerate(lib_dirs):
        meta, lib = load_metadata(Path(d))
        gpu = is_cuda_library(meta)  # a Jetson library runs on the board's GPU, its host code on the CPU
        dev = sess.cuda() if gpu else cpu
        try:
            sess.upload(str(lib), target=f"se{i}-{lib.name}")
            vm = relax.VirtualMachine(sess.load_module(f"se{i}-{lib.name}"), [dev, cpu] if gpu else dev)
            vm.set_input("main", *[tvm.runtime.tensor(np.ascontiguousarray(feed[s["name"]], dtype=s["dtype"]), dev)
                                   for s in meta["inputs"]])
        except Exception as exc:
            raise ArtifactError(f"board '{key}' cannot load {lib} (built for {meta['target']['name']}) on its "
                                f"{'GPU' if gpu else 'CPU'}: {(str(exc).strip().splitlines() or ['?'])[-1][:160]}") \
                from None
        evaluator = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=1)

        def run(_feed, vm=vm, _keep=sess):  # the session lives as long as the runner
            vm.invoke_stateful("main")
            out = vm.get_outputs("main")
            return (out[0] if not hasattr(out, "numpy") else out).numpy()

        runners.append(Runner(f"squeezeedge {meta['precision']} ({meta['target']['name']})", "squeezeedge",
                              meta["precision"], run, meta["library"]["bytes"],
                              {"library": str(d), "target": meta["target"]["name"], "tuning": meta.get("tuning"),
                               "int8": meta.get("int8"), "thread_pool": {"threads": threads,
                                                                         "threads_from": "runtime.config_threadpool"}},
                              timer=lambda ev=evaluator: ev("main").results[0] * 1e3))
    return runners
