"""An independent check of `bench --emulate`'s library counts, from the deploy bundles alone.

For each bundle: unpack it, run its own runner (no marker system calls) on its own example input cut to
N tokens, with --threads 1, under qemu-user on the target's core with the counting plugin, once with 1
run and once with 3; (total of 3 - total of 1) / 2 is one inference, loading and start-up cancelled out.
Compared with the emulated bench's count at the same length (other random ids: the kernels' work does
not depend on the ids), it must agree within --tolerance.

    python -m squeezeedge.measure.count_check results/boards-emulated.json BUNDLE.tar.gz ... --out results/NAME
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def total(cmd: list[str], log: Path) -> int:
    # one thread: the runner lets TVM_NUM_THREADS override --threads, and a pool's threads would be counted
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TVM_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-6:])} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return int(re.search(r"^total (\d+)$", log.read_text(), re.M).group(1))


def per_inference(bundle: Path, cpu: str, tokens: int) -> int:
    """(3 runs - 1 run) / 2 of the bundle's runner on the first ``tokens`` tokens of its example."""
    from squeezeedge.deploy.board_python import counter_args
    from squeezeedge.deploy.bundle import emulator_prefix, safe_extract

    with tempfile.TemporaryDirectory(prefix="se-check-") as tmp:
        tmp = Path(tmp)
        name = safe_extract(bundle, tmp)[0].split("/")[0]
        root = tmp / name
        meta = json.loads((root / "metadata.json").read_text())
        specs = []
        for spec in meta["inputs"]:
            width = 8 if spec["dtype"] == "int64" else 4
            data = (root / "inputs" / f"{spec['name']}.bin").read_bytes()[: tokens * width]
            (tmp / f"{spec['name']}.bin").write_bytes(data)
            specs.append(f"{spec['name']}:{spec['dtype']}:1x{tokens}:{tmp / (spec['name'] + '.bin')}")
        qemu, _, sysroot = emulator_prefix("aarch64")
        lengths = ["--lengths", ",".join(map(str, meta["lengths"]))] if meta.get("lengths") else []
        counts = []
        for runs in (1, 3):
            log = tmp / f"count-{runs}.log"
            counts.append(total([qemu, "-cpu", cpu, *counter_args(log), "-L", sysroot, str(root / "run_model"),
                                 "--threads", "1", *lengths, str(root / "model.so"), str(tmp / "out.bin"), str(runs),
                                 *specs], log))
        return (counts[1] - counts[0]) // 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m squeezeedge.measure.count_check", description=__doc__.splitlines()[0])
    ap.add_argument("emulated", type=Path, help="bench --emulate results")
    ap.add_argument("bundles", type=Path, nargs="+", help="the libraries' deploy bundles (TARGET-PRECISION.tar.gz)")
    ap.add_argument("--lengths", default="16,128")
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    run = json.loads(args.emulated.read_text())
    rows, ok = [], True
    for bundle in args.bundles:
        board = next((b for b in run["boards"] if Path(b["path"]).name == bundle.name.removesuffix(".tar.gz")), None)
        if board is None:
            print(f"count check: no library of {bundle.name} in {args.emulated}", file=sys.stderr)
            return 2
        for n in map(int, args.lengths.split(",")):
            want = board["rows"][0]["lengths"].get(str(n))
            if want is None:
                continue
            got = per_inference(bundle, board["core"], n)
            agree = abs(got - want) / want <= args.tolerance
            ok &= agree
            rows.append({"bundle": bundle.name, "core": board["core"], "tokens": n, "bench_emulate": want,
                         "runner_3_minus_1": got, "relative_diff": (got - want) / want, "agrees": agree})
            print(f"{bundle.name} on {board['core']} at {n} tokens: bench --emulate {want:,} vs runner "
                  f"(3 runs - 1 run) / 2 {got:,}: {(got - want) / want:+.3%}")
    args.out.with_suffix(".json").write_text(json.dumps({"tolerance": args.tolerance, "rows": rows}, indent=1) + "\n")
    md = ["# Independent check of the emulated instruction counts", "",
          "Each bundle's own runner, its own example input cut to N tokens, `--threads 1`, no marker calls, under "
          f"qemu-user on the target's core with the counting plugin: (total of 3 runs - total of 1 run) / 2, "
          f"against `bench --emulate` at the same length. Tolerance {args.tolerance:.0%}.", "",
          "| bundle | core | tokens | bench --emulate | runner (3 - 1) / 2 | difference |",
          "| --- | --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['bundle']} | {r['core']} | {r['tokens']} | {r['bench_emulate']:,} | {r['runner_3_minus_1']:,} | "
           f"{r['relative_diff']:+.3%} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
