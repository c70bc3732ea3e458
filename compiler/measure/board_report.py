"""The report's boards section: instructions per inference counted on emulated board cores
(compiler/measure/emulate.py), beside the peers on the same core and the floor. Never mixed with timings."""

from __future__ import annotations


def _m(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:,.0f}" if v >= 1e8 else f"{v / 1e6:.3g}"


def columns(board: dict) -> list[str]:
    """Length points of the board's library, and "text" where it ran the real-text workload."""
    lib = board["rows"][0]
    return [*lib["lengths"], *(["text"] if lib.get("text_mean") is not None else [])]


def _value(row: dict, col: str) -> float | None:
    return row.get("text_mean") if col == "text" else row["lengths"].get(col)


def floor_value(board: dict, col: str) -> float | None:
    f = board["floor"]
    macs = f.get("text_macs") if col == "text" else f["macs"].get(col)
    return macs / f["macs_per_instruction"] if macs else None


def instruction_table(board: dict) -> list[list[str]]:
    """M instructions per inference for each runtime at each length and per real text, the floor, and the
    library over each peer and over the floor."""
    cols = columns(board)
    head = ["M instructions per inference", *(f"{c} tokens" if c != "text" else "real text (mean)" for c in cols)]
    lib, *peers = board["rows"]
    rows = [head] + [[r["name"], *(_m(_value(r, c)) for c in cols)] for r in board["rows"]]
    f = board["floor"]
    rows.append([f"floor: multiply-adds / {f['macs_per_instruction']:.3g} ({f['instruction']})",
                 *(_m(floor_value(board, c)) for c in cols)])
    for p in peers:
        rows.append([f"{lib['name'].split(' (')[0]} / {p['name']}",
                     *(f"{_value(lib, c) / _value(p, c):.2f}x" if _value(lib, c) and _value(p, c) else "-"
                       for c in cols)])
    rows.append([f"{lib['name'].split(' (')[0]} / floor",
                 *(f"{_value(lib, c) / floor_value(board, c):.2f}x" if _value(lib, c) and floor_value(board, c)
                   else "-" for c in cols)])
    return rows


def summary_table(run: dict) -> list[list[str]]:
    """One row per library of a run: M instructions at 16 and 128 tokens and per real text, over
    onnxruntime's fewest at that precision on the same core (its int8 recipes: the fewer of the two), and
    over the floor (README.md's boards table; a test checks it against results/)."""
    rows = [["library", "core", "16 tokens", "128 tokens", "real text", "/ onnxruntime (16 / 128 / text)",
             "/ floor (16 / 128 / text)"]]
    for b in run["boards"]:
        lib = b["rows"][0]
        ort = [r for r in b["rows"][1:] if r["family"] == "onnxruntime" and r["precision"] == lib["precision"]]
        cols = [c for c in ("16", "128", "text") if c in columns(b)]

        def best(c):
            return min((_value(r, c) for r in ort if _value(r, c)), default=None)

        ratio = lambda a, z: f"{a / z:.2f}x" if a and z else "-"  # noqa: E731
        rows.append([lib["name"], b["core"], *(_m(_value(lib, c)) for c in ("16", "128", "text")),
                     " / ".join(ratio(_value(lib, c), best(c)) for c in cols),
                     " / ".join(ratio(_value(lib, c), floor_value(b, c)) for c in cols)])
    return rows


def _key(board: dict) -> str:
    return f"{board['library']} on {board['core']}"


def sections(runs: list[dict]) -> list[tuple[str, str, list[list[str]]]]:
    """Newest count of each library on its core, then the history of its counts."""
    newest: dict[str, tuple[dict, dict]] = {}
    history: dict[str, list[tuple[dict, dict]]] = {}
    for run in runs:
        for b in run["boards"]:
            newest[_key(b)] = (run, b)
            history.setdefault(_key(b), []).append((run, b))
    out = [("Boards: instructions per inference (emulated), newest run", "Each library over the fewest "
            "instructions onnxruntime needs at its precision on the same core, and over the floor.",
            summary_table(runs[-1]))] if runs else []
    for key, (run, b) in newest.items():
        text = b.get("text") or {}
        tok = text.get("tokens")
        how = (f"Emulated: {b['core']} under {run['method']['qemu']}, 1 thread, counted between marker system calls "
               f"(the second of two runs of each input); {run['created']}, commit "
               f"{str(run['git']['commit'])[:10]}. Random ids at each length"
               + (f"; real text: {text['texts']} texts from {text['source']} ({tok['min']}-{tok['max']} tokens, "
                  f"median {tok['median']:g}), each at its own length (the library pads to its bucket)" if tok else "")
               + ". Ratios: the library's count over each runtime's on the same core and inputs (lower is less "
               "work). Not a latency." + (" Skipped: " + "; ".join(f"{k} ({v})" for k, v in b["skipped"].items())
                                          if b.get("skipped") else ""))
        out.append((f"Board {key}: instructions per inference (emulated)", how, instruction_table(b)))
        if len(history[key]) > 1:
            cols = columns(b)
            rows = [["run", *(f"{c} tokens" if c != "text" else "real text" for c in cols)]]
            rows += [[r["created"], *(_m(_value(hb["rows"][0], c)) for c in cols)] for r, hb in history[key]]
            out.append((f"Board {key}: history (M instructions)", "", rows))
    return out


def regressions(runs: list[dict], threshold: float) -> list[str]:
    """Each library whose count at any length or per text is more than ``threshold`` above the previous
    run's, on the same core."""
    history: dict[str, list[dict]] = {}
    for run in runs:
        for b in run["boards"]:
            history.setdefault(_key(b), []).append(b)
    found = []
    for key, bs in history.items():
        if len(bs) < 2:
            continue
        prev, new = bs[-2]["rows"][0], bs[-1]["rows"][0]
        for c in columns(bs[-1]):
            a, b = _value(prev, c), _value(new, c)
            if a and b and b > a * (1 + threshold):
                where = "per real text" if c == "text" else f"at {c} tokens"
                found.append(f"{key}: {b / 1e6:,.1f} M instructions {where} vs {a / 1e6:,.1f} M before "
                             f"(+{b / a - 1:.1%} > {threshold:.0%})")
    return found
