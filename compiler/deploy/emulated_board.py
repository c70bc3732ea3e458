"""An aarch64 board with no board: a TVM RPC server whose sessions run under qemu-user.

TVM's own Python server registers with the tracker and does the handshake; each session is then served
by compiler/deploy/runner/rpc_board.cc, built against the aarch64 TVM runtime (the same one deploy bundles)
and run under qemu-aarch64. Tuning and bench through ``--tracker`` then upload, load and time real
aarch64 code (sdot included) from CI with no board attached.

Timings are qemu's, not a board's: they prove the kernels load, run and give the right answers, and
let the tuning flow run end to end, but a database tuned on an emulated board is ranked by emulation
speed. Tune on the board for speed.

    python -m squeezeedge.deploy.emulated_board --tracker 127.0.0.1:9190 --key rpi5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SOURCE = Path(__file__).with_name("runner") / "rpc_board.cc"


def _serve_emulated(sock, load_library, work_path):  # the signature of tvm.rpc.server._serve_loop
    from squeezeedge.deploy.bundle import emulator_prefix, runner

    exe = runner("aarch64", SOURCE)  # built by serve(); here only found again
    fd = sock.fileno()
    subprocess.run([*emulator_prefix("aarch64"), str(exe), str(fd), work_path.path], pass_fds=(fd,), check=False)


def serve(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199) -> None:
    """Register under ``key`` at ``tracker`` and serve sessions under qemu until killed."""
    from tvm.rpc import server

    from squeezeedge.deploy.bundle import emulator_prefix, runner
    from squeezeedge.deploy.fleet import parse_addr

    emulator_prefix("aarch64")  # fail now, naming the package, if qemu or the sysroot is missing
    runner("aarch64", SOURCE)
    server._serve_loop = _serve_emulated
    server.PopenRPCServerState(host, port, port_end, False, parse_addr(tracker), key, None, None, True)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m squeezeedge.deploy.emulated_board", description=__doc__.splitlines()[0])
    ap.add_argument("--tracker", required=True, metavar="HOST:PORT")
    ap.add_argument("--key", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)
    try:
        serve(args.tracker, args.key, args.host)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # noqa: BLE001 (one line, like the CLI)
        print(f"emulated board: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
