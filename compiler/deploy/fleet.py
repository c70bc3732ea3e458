"""A board fleet through TVM's own RPC tracker and servers (no second distributed engine here).

``up`` starts ``python -m tvm.exec.rpc_tracker`` and, optionally, local ``python -m tvm.exec.rpc_server``
processes registered under keys; ``status`` asks the tracker what is registered; ``down`` stops what
``up`` started. Everything binds to 127.0.0.1 unless told otherwise: TVM RPC has no authentication,
so anyone who can reach a tracker or server can run code on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from squeezeedge import console
from squeezeedge.errors import InputError, OutputError

STATE = "fleet.json"


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"tracker address must be HOST:PORT, got '{addr}'")
    return host, int(port)


def summary(addr: str, timeout: float = 3.0) -> dict:
    """The tracker's summary; InputError (one line) if nothing answers at ``addr``."""
    from tvm import rpc

    host, port = parse_addr(addr)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"cannot reach the RPC tracker at {addr}: {exc.strerror or exc}") from None
    try:
        return rpc.connect_tracker(host, port).summary()
    except Exception as exc:  # a port that answers but is not a tracker
        raise InputError(f"{addr} does not answer as a TVM RPC tracker: {str(exc).splitlines()[0][:120]}") from None


def registered_keys(info: dict) -> dict[str, int]:
    """key -> free servers, from a tracker summary."""
    return {k: int(v.get("free", 0)) for k, v in info.get("queue_info", {}).items()}


def boards(addr: str, key: str) -> int:
    """How many servers (free or busy) are connected to the tracker under ``key``."""
    return sum(1 for s in summary(addr).get("server_info", []) if s.get("key") == f"server:{key}")


def check_key(addr: str, key: str) -> int:
    """How many boards are registered under ``key``; InputError naming the registered keys if none."""
    keys = registered_keys(summary(addr))
    if key not in keys:
        raise InputError(f"no board registered under key '{key}' at {addr} "
                         f"(registered: {', '.join(sorted(keys)) or 'none'})")
    return keys[key]


def _spawn(args: list[str], log: Path) -> int:
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child (a zombie still answers kill 0); True if it had exited."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def up(fleet_dir: Path, host: str = "127.0.0.1", port: int = 9190, servers: tuple[str, ...] = (),
       server_host: str = "127.0.0.1", wait_s: float = 60.0, emulated: tuple[str, ...] = ()) -> dict:
    """Start a tracker, local servers under ``servers`` keys and emulated aarch64 boards under
    ``emulated`` keys (compiler/deploy/emulated_board.py: sessions under qemu-user); returns the fleet state."""
    fleet_dir = Path(fleet_dir)
    state_path = fleet_dir / STATE
    if state_path.is_file():
        old = json.loads(state_path.read_text())
        if any(_alive(p) for p in old["pids"]):
            raise OutputError(f"a fleet is already up (tracker {old['tracker']}); run 'squeezeedge fleet down' first")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.info(f"  warning: binding the tracker to {host}; TVM RPC has no authentication")
    try:
        socket.create_connection((host, port), timeout=1).close()
        raise OutputError(f"port {port} on {host} is already in use")
    except OSError:
        pass
    fleet_dir.mkdir(parents=True, exist_ok=True)
    addr = f"{host}:{port}"
    pids = [_spawn(["tvm.exec.rpc_tracker", "--host", host, "--port", str(port), "--port-end", str(port + 1),
                    "--silent"], fleet_dir / "tracker.log")]
    state = {"tracker": addr, "pids": pids, "servers": list(servers), "emulated": list(emulated),
             "started": time.time()}
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    deadline = time.time() + wait_s
    while True:
        try:
            info = summary(addr, timeout=1)
            break
        except InputError:
            if time.time() > deadline:
                down(fleet_dir)
                raise OutputError(f"the RPC tracker did not come up on {addr} (see {fleet_dir / 'tracker.log'})")
            time.sleep(0.3)
    for key in servers:
        pids.append(_spawn(["tvm.exec.rpc_server", "--tracker", addr, "--key", key, "--host", server_host,
                            "--port", "9090", "--port-end", "9199", "--silent"], fleet_dir / f"server-{key}.log"))
        state_path.write_text(json.dumps(state, indent=2) + "\n")
    for key in emulated:
        pids.append(_spawn(["squeezeedge.deploy.emulated_board", "--tracker", addr, "--key", key, "--host", server_host],
                           fleet_dir / f"emulated-{key}.log"))
        state_path.write_text(json.dumps(state, indent=2) + "\n")
    while (set(servers) | set(emulated)) - set(registered_keys(info)):
        dead = [pid for pid in pids if not _alive(pid) or _reaped(pid)]
        if dead:
            logs = sorted(fleet_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
            last = (logs[-1].read_text().strip().splitlines() or ["?"])[-1] if logs else "?"
            down(fleet_dir)
            raise OutputError(f"an RPC server exited while starting: {last[:200]}")
        if time.time() > deadline:
            down(fleet_dir)
            raise OutputError(f"RPC servers did not register with {addr} in {wait_s:.0f} s (see the logs in "
                              f"{fleet_dir})")
        time.sleep(0.3)
        info = summary(addr, timeout=1)
    return state | {"registered": registered_keys(info)}


def down(fleet_dir: Path) -> list[int]:
    """Stop every process ``up`` started (their whole process groups); returns the pids stopped."""
    state_path = Path(fleet_dir) / STATE
    if not state_path.is_file():
        raise InputError(f"no fleet state in {fleet_dir} (nothing started with 'squeezeedge fleet up')")
    state = json.loads(state_path.read_text())
    stopped = []
    for pid in reversed(state["pids"]):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except OSError:
                break
            for _ in range(20):
                if not _alive(pid):
                    break
                time.sleep(0.1)
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            else:
                continue
            break
        stopped.append(pid)
    state_path.unlink()
    return stopped
