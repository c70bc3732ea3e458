"""`squeezeedge report`: Markdown, HTML and PNG plots from bench result files (and nothing else).

Groups runs by device label; the newest run of each device is its headline, older runs form the
history that ``--fail-on median:P%`` checks: a squeezeedge library whose median in the newest run is
more than P% above the previous run's on the same device is a regression (exit code 13).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from squeezeedge.measure import board_report
from squeezeedge.measure.bench import validate_report
from squeezeedge.measure.emulate import SCHEMA_NAME as COUNT_SCHEMA, SCHEMA_VERSION as COUNT_VERSION
from squeezeedge.artifact import write_text_atomic
from squeezeedge.errors import InputError, OutputError, RegressionError

PLOTS = ("latency.png", "speedup.png", "agreement.png", "size.png")
LENGTH_PLOT = "length.png"  # runs of any-length libraries only


def load_results(paths: list[Path]) -> list[dict]:
    runs = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except OSError as exc:
            raise InputError(f"cannot read {p}: {exc.strerror}") from None
        except ValueError as exc:
            raise InputError(f"{p} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"{p} is not a squeezeedge bench result")
        if data.get("schema") == COUNT_SCHEMA:  # bench --emulate: instruction counts
            if data.get("schema_version") != COUNT_VERSION or not isinstance(data.get("boards"), list):
                raise InputError(f"{p}: instruction counts of schema version {data.get('schema_version')} "
                                 f"are not supported (this squeezeedge reads version {COUNT_VERSION})")
            runs.append(data | {"_file": str(p)})
            continue
        try:
            validate_report(data)
        except InputError as exc:
            raise InputError(f"{p}: {exc}") from None
        runs.append(data | {"_file": str(p)})
    if not runs:
        raise InputError("no bench result files given")
    return sorted(runs, key=lambda r: r["created"])  # both kinds carry "created"


def parse_fail_on(spec: str | None) -> dict[str, float]:
    """{"median" | "instructions": threshold} from "median:P%", "instructions:P%" or both, comma-separated."""
    out: dict[str, float] = {}
    for part in (spec.split(",") if spec else []):
        metric, _, pct = part.strip().partition(":")
        try:
            if metric not in ("median", "instructions") or not pct.endswith("%"):
                raise ValueError
            value = float(pct[:-1])
        except ValueError:
            raise InputError(f"--fail-on takes median:P% and/or instructions:P% (e.g. median:5%,instructions:1%), "
                             f"got '{spec}'") from None
        if value < 0:
            raise InputError("--fail-on percentage must be >= 0")
        out[metric] = value / 100
    return out


def by_device(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in runs:
        out.setdefault(r["device"]["label"], []).append(r)
    return out


def _ok(run: dict) -> list[dict]:
    return [rt for rt in run["runtimes"] if rt["status"] == "ok"]


def speedups(run: dict) -> list[dict]:
    """Each squeezeedge library against each baseline of the same run: baseline median / library median."""
    libs = [rt for rt in _ok(run) if rt["family"] == "squeezeedge"]
    bases = [rt for rt in _ok(run) if rt["family"] != "squeezeedge"]
    return [{"library": lib["name"], "baseline": b["name"],
             "speedup": b["stats"]["median_ms"] / lib["stats"]["median_ms"]} for lib in libs for b in bases]


def regressions(runs: list[dict], threshold: float) -> list[str]:
    found = []
    for device, rs in by_device(runs).items():
        if len(rs) < 2:
            continue
        prev, new = rs[-2], rs[-1]
        before = {rt["name"]: rt["stats"]["median_ms"] for rt in _ok(prev) if rt["family"] == "squeezeedge"}
        for rt in _ok(new):
            if rt["name"] in before and rt["stats"]["median_ms"] > before[rt["name"]] * (1 + threshold):
                found.append(f"{device}: {rt['name']} median {rt['stats']['median_ms']:.2f} ms vs "
                             f"{before[rt['name']]:.2f} ms before (+{rt['stats']['median_ms'] / before[rt['name']] - 1:.1%}"
                             f" > {threshold:.0%})")
    return found


def headline_table(run: dict) -> list[list[str]]:
    """Rows of the newest run on one device: runtime, median, p90, p99, n, verdict, MB, cosine."""
    rows = [["runtime", "median ms", "p90 ms", "p99 ms", "runs", "verdict", "model MB", "cosine vs ref"]]
    for rt in run["runtimes"]:
        if rt["status"] != "ok":
            rows.append([rt["name"], "-", "-", "-", "-", "skipped: " + rt["reason"], "-", "-"])
            continue
        st, ag = rt["stats"], rt["agreement"] or {}
        rows.append([rt["name"], f"{st['median_ms']:.2f}", f"{st['p90_ms']:.2f}", f"{st['p99_ms']:.2f}", str(st["n"]),
                     rt["verdict"] + (f" ({'; '.join(rt['verdict_reasons'])})" if rt["verdict_reasons"] else ""),
                     f"{rt['model_bytes'] / 1e6:.1f}" if rt["model_bytes"] else "-",
                     f"{ag['cosine']:.4f}" if ag.get("cosine") is not None else "-"])
    return rows


def text_table(run: dict) -> list[list[str]] | None:
    """The real-text workload of an any-length library's run (squeezeedge.measure.workloads), or None."""
    text = (run.get("workloads") or {}).get("text") or {}
    if not text.get("rows"):
        return None
    rows = [["runtime", "mean ms per text", "median ms", "p90 ms", "calls", f"min cosine vs {text['reference']}"]]
    for r in text["rows"]:
        st, ag = r["stats"], r.get("agreement") or {}
        rows.append([r["name"], f"{r['mean_ms_per_text']:.2f}", f"{st['median_ms']:.2f}", f"{st['p90_ms']:.2f}",
                     str(st["n"]), f"{ag['min_cosine']:.4f}" if ag.get("min_cosine") is not None else "-"])
    return rows


def summary_table(run: dict) -> list[list[str]] | None:
    """README.md's latency table: each runtime's mean ms per real text, over onnxruntime's fastest int8 and
    its fp32 in the same run, and its medians at the shortest and longest lengths (a test checks README.md
    against results/)."""
    from squeezeedge.measure.workloads import length_medians

    text = (run.get("workloads") or {}).get("text") or {}
    if not text.get("rows"):
        return None
    mean = {r["name"]: r["mean_ms_per_text"] for r in text["rows"]}
    ort_int8 = min((v for k, v in mean.items() if k.startswith("onnxruntime int8")), default=None)
    ort_fp32 = mean.get("onnxruntime fp32")
    med = length_medians(run) or {}
    points = run["workloads"]["lengths"]["points"] if med else []
    ends = [points[0], points[-1]] if points else []
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
    rows = [["runtime", "mean ms per text", "/ onnxruntime int8 (fastest)", "/ onnxruntime fp32",
             *(f"median ms, {n} tokens" for n in ends)]]
    for name, m in mean.items():
        rows.append([name, f"{m:.2f}", ratio(m, ort_int8), ratio(m, ort_fp32),
                     *(f"{med[name][n]:.2f}" if n in med.get(name, {}) else "-" for n in ends)])
    return rows


def length_table(run: dict) -> list[list[str]] | None:
    """Median ms per runtime at each length of the per-length sweep, or None."""
    from squeezeedge.measure.workloads import length_medians

    med = length_medians(run)
    if not med:
        return None
    points = run["workloads"]["lengths"]["points"]
    rows = [["runtime", *(f"{n} tokens" for n in points)]]
    rows += [[name, *(f"{m[n]:.2f}" if n in m else "-" for n in points)] for name, m in med.items()]
    return rows


def _md(rows: list[list[str]]) -> str:
    head, *body = rows
    align = ["---"] + ["---:"] * (len(head) - 1)
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, align, *body])


def _html(rows: list[list[str]]) -> str:
    head, *body = rows
    cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{trs}</tbody></table>"


def sections(runs: list[dict]) -> list[tuple[str, str, list[list[str]]]]:
    """(title, text, table) for the report: per device the newest run, speed-ups, then cross-device and history."""
    out = []
    devices = by_device(runs)
    for device, rs in devices.items():
        run = rs[-1]
        m = run["method"]
        how = (f"{run['created']}, commit {str(run['git']['commit'])[:10]}{' (dirty)' if run['git']['dirty'] else ''}, "
               f"{run['threads']} threads, batch {run['model']['batch']}, seq {run['model']['seq_len']}; "
               f"{m['warmup']} warm-up rounds then {m['rounds']} {'interleaved ' if m['interleaved'] else ''}rounds "
               f"({m['clock']}); run verdict {run['verdict']}. Source: {run['_file']}")
        if run.get("fidelity"):
            f = run["fidelity"]
            how += (f". int8 fidelity on {f['samples']} held-out texts (quantize stage, fp32 vs int8): "
                    f"mean cosine {f['mean_cosine']:.4f}, min {f['min_cosine']:.4f}, top-1 agreement "
                    f"{f['top1_agreement']:.1%}")
        text = text_table(run)
        if text:
            from squeezeedge.measure.workloads import text_speedups

            t = run["workloads"]["text"]
            tok = t["tokens"]
            ratios = text_speedups(run)
            short = {s["library"]: s["library"].split(" (")[0] for s in ratios}  # "(target)" only where needed
            if len(set(short.values())) < len(short):
                short = {name: name for name in short}
            out.append((f"{device}: real text, each at its own length",
                        f"{t['texts']} texts from {t['source']} ({tok['min']}-{tok['max']} tokens, median "
                        f"{tok['median']:g}, p90 {tok['p90']:g}), {t['passes']} interleaved pass(es); the library "
                        "pads each text to its smallest length bucket, onnxruntime and PyTorch run the dynamic "
                        "export at exactly the text's length. Ratios (library mean / baseline mean, lower is "
                        "faster): " + "; ".join(f"{short[s['library']]} / {s['baseline']} {s['ratio']:.2f}x"
                                                for s in ratios), text))
            lengths = length_table(run)
            if lengths:
                out.append((f"{device}: median ms by input length", "Random ids at each length, interleaved; the "
                            "longest is the main measurement below.", lengths))
        out.append((f"{device}: latency" + (f" at {run['model']['seq_len']} tokens" if text else ""), how,
                    headline_table(run)))
        sp = speedups(run)
        if sp:
            rows = [["library", "baseline", "speed-up (baseline median / library median)"]]
            rows += [[s["library"], s["baseline"], f"{s['speedup']:.2f}x"] for s in sp]
            out.append((f"{device}: speed-up over each baseline", "Same run, same input, same threads.", rows))
    if len(devices) > 1:
        names = sorted({rt["name"] for rs in devices.values() for rt in _ok(rs[-1])})
        rows = [["runtime", *devices]]
        for n in names:
            rows.append([n, *(next((f"{rt['stats']['median_ms']:.2f}" for rt in _ok(rs[-1]) if rt["name"] == n), "-")
                              for rs in devices.values())])
        out.append(("Across devices (median ms, newest run of each)", "", rows))
    for device, rs in devices.items():
        if len(rs) > 1:
            names = [rt["name"] for rt in _ok(rs[-1])]
            rows = [["run", *names]]
            for r in rs:
                med = {rt["name"]: rt["stats"]["median_ms"] for rt in _ok(r)}
                rows.append([r["created"], *(f"{med[n]:.2f}" if n in med else "-" for n in names)])
            out.append((f"{device}: history (median ms)", "", rows))
    return out


def plots(runs: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (the length plot)

    devices = by_device(runs)
    newest = {d: rs[-1] for d, rs in devices.items()}

    def bars(fname, title, xlabel, value, families=None, line=None):
        fig, axes = plt.subplots(len(newest), 1, figsize=(8, 1.2 + 0.45 * max(len(r["runtimes"]) for r in
                                                                                      newest.values()) * len(newest)),
                                 squeeze=False)
        for ax, (device, run) in zip(axes[:, 0], newest.items()):
            items = [(label, v) for label, v in value(run) if v is not None]
            ax.barh([i[0] for i in items], [i[1] for i in items],
                    color=["#d62728" if i[0].startswith("squeezeedge") else "#7f7f7f" for i in items])
            for y, (_, v) in enumerate(items):
                ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
            if line is not None:
                ax.axvline(line, color="black", lw=0.8)
            ax.set_title(device, fontsize=9)
            ax.invert_yaxis()
            ax.set_xlabel(xlabel)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)

    bars("latency.png", "Median latency per runtime (lower is better)", "ms",
         lambda r: [(rt["name"], rt["stats"]["median_ms"]) for rt in _ok(r)])
    bars("speedup.png", "squeezeedge speed-up over each baseline (>1: faster)", "x",
         lambda r: [(f"{s['library'].split(' (')[0]} vs {s['baseline']}", s["speedup"]) for s in speedups(r)]
         or [("no squeezeedge library in this run", 0.0)], line=1.0)
    bars("agreement.png", "Output cosine vs the fp32 reference (same input)", "cosine",
         lambda r: [(rt["name"], (rt["agreement"] or {}).get("cosine")) for rt in _ok(r)])
    bars("size.png", "Model / library size", "MB",
         lambda r: [(rt["name"], rt["model_bytes"] / 1e6 if rt["model_bytes"] else None) for rt in _ok(r)])
    from squeezeedge.measure.workloads import length_medians

    swept = {d: length_medians(r) for d, r in newest.items() if length_medians(r)}
    if not swept:
        return list(PLOTS)
    fig, axes = plt.subplots(len(swept), 1, figsize=(8, 4 * len(swept)), squeeze=False)
    for ax, (device, med) in zip(axes[:, 0], swept.items()):
        for name, m in med.items():
            xs = sorted(m)
            ax.plot(xs, [m[x] for x in xs], marker="o", lw=2.5 if name.startswith("squeezeedge") else 1.2,
                    label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({x for m in med.values() for x in m}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("tokens")
        ax.set_ylabel("median ms")
        ax.set_title(device, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("Latency against input length (lower is better)")
    fig.tight_layout()
    fig.savefig(out / LENGTH_PLOT, dpi=100)
    plt.close(fig)
    return [*PLOTS, LENGTH_PLOT]


def render(paths: list[Path], out: Path, fail_on: str | None = None) -> dict:
    """Write report.md, report.html and the PNG plots into ``out``; raise RegressionError on --fail-on."""
    thresholds = parse_fail_on(fail_on)
    loaded = load_results(paths)
    runs = [r for r in loaded if r["schema"] != COUNT_SCHEMA]
    counts = [r for r in loaded if r["schema"] == COUNT_SCHEMA]
    secs = sections(runs) + board_report.sections(counts)
    try:
        out.mkdir(parents=True, exist_ok=True)
        pngs = plots(runs, out) if runs else []
        md = ["# squeezeedge latency report", "",
              f"{len(runs)} timed run(s) from {len(by_device(runs))} device(s)"
              + (f", {len(counts)} run(s) of instructions counted on emulated board cores (never mixed with "
                 "timings)" if counts else "") + ". Every ratio compares runtimes measured in the same run."
              + (" Plots: " + ", ".join(f"[{p}]({p})" for p in pngs) if pngs else ""), ""]
        body = []
        for title, text, rows in secs:
            md += [f"## {title}", "", text, "", _md(rows), ""] if text else [f"## {title}", "", _md(rows), ""]
            body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>{_html(rows)}")
        imgs = "".join(f'<p><img src="{p}" alt="{p}"></p>' for p in pngs)
        page = ("<!doctype html><meta charset='utf-8'><title>squeezeedge latency report</title>"
                "<style>body{font-family:sans-serif;max-width:70em}td,th{padding:2px 8px;text-align:right}"
                "td:first-child{text-align:left}table{border-collapse:collapse}tr:nth-child(even){background:#eee}"
                "</style><h1>squeezeedge latency report</h1>" + "".join(body) + imgs)
        write_text_atomic(out / "report.md", "\n".join(md))
        write_text_atomic(out / "report.html", page)
    except OSError as exc:
        raise OutputError(f"cannot write the report to {out}: {exc.strerror}") from None
    result = {"out": str(out), "files": ["report.md", "report.html", *pngs], "runs": len(loaded),
              "headline": _md(secs[0][2]) if secs else ""}
    found = (regressions(runs, thresholds["median"]) if "median" in thresholds else []) \
        + (board_report.regressions(counts, thresholds["instructions"]) if "instructions" in thresholds else [])
    if found:
        raise RegressionError(f"{len(found)} regression(s): " + "; ".join(found))
    return result


