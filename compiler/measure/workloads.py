"""`squeezeedge bench`'s workloads for a library that takes any length (a --dynamic export's):

- **text**: real text, each at its own length (no padding): the held-out texts of the shipped corpus
  (the split quantize holds out by default) or ``--texts FILE``, tokenized with the model's WordPiece
  vocabulary. Every runtime that takes any length runs the same text in the same round (the library
  pads to its bucket, onnxruntime and PyTorch run exactly that length); timing stops after whole passes,
  so the mean is the workload's mean ms per text. Each runtime's outputs are compared, text by text,
  with the fp32 reference at that exact length.
- **lengths**: random ids at 16, 32, 64 and 128 tokens (those up to the library's maximum), interleaved
  like the main measurement; the maximum's row is the main measurement's own.

Runtimes that take one length only (TFLite, a static export) are left out of both, with the reason.
"""

from __future__ import annotations

from squeezeedge import console

LENGTH_POINTS = (16, 32, 64, 128)
HELDOUT = (128, 64, 0)  # quantize's defaults: --num-samples, --num-heldout, --seed


def text_feeds(texts: list[str], checkpoint: str | None, max_len: int, vocab: int) -> list[dict]:
    """One feed [1, L] per text at its own length L (truncated to ``max_len``)."""
    from squeezeedge.stages.calibdata import batches, load_tokenizer

    tok, _ = load_tokenizer(checkpoint, max_len)
    return batches(tok, texts, vocab, 1, own_length=True)


def workload_texts(cfg) -> tuple[list[str], str]:
    from squeezeedge.stages.calibdata import DEFAULT_CORPUS, read_texts, split

    if cfg.texts is not None:
        corpus = read_texts(cfg.texts)
        return list(corpus.texts), str(corpus.path)
    corpus = read_texts(DEFAULT_CORPUS)
    n_cal, n_held, seed = HELDOUT
    return split(corpus.texts, n_cal, n_held, seed, corpus.path)[1], f"{corpus.path.name} (held-out split)"


def any_length_workloads(runners, cfg, chain, meta: dict, max_len: int) -> dict:
    """The ``workloads`` section of a bench report (see the module docstring)."""
    import numpy as np

    from squeezeedge.measure.timing import interleave, stats, verdict
    from squeezeedge.stages.build import cosine
    from squeezeedge.runtime import random_inputs

    dyn = [r for r in runners if r.any_length]
    left_out = {r.name: "takes one length only (static-shape model)" for r in runners if not r.any_length}
    batch = meta["inputs"][0]["shape"][0]
    vocab, types = meta.get("vocab_size") or 30528, meta.get("type_vocab_size") or 2
    ref = next((r for n in ("pytorch fp32", "onnxruntime fp32") for r in dyn if r.name == n), None)
    out: dict = {"lengths": {"points": [n for n in LENGTH_POINTS if n <= max_len], "rows": {}, "left_out": left_out}}
    for n in out["lengths"]["points"]:
        if n == max_len:
            out["lengths"]["rows"][str(n)] = "main"  # the main measurement (report.runtimes) is this length
            continue
        console.info(f"  {n} tokens: timing {len(dyn)} runtimes, interleaved")
        feed = random_inputs(vocab, types, batch, n, cfg.seed)
        samples, window_s = interleave(dyn, feed, cfg)
        rows = []
        for r in dyn:
            st = stats(samples[r.name])
            v, reasons = verdict(st, window_s)
            rows.append({"name": r.name, "stats": st, "verdict": v, "verdict_reasons": reasons})
        out["lengths"]["rows"][str(n)] = rows
    if batch != 1:
        out["text"] = {"skipped": f"the library takes batch {batch}; the real-text workload runs one text at a time"}
        return out
    texts, source = workload_texts(cfg)
    checkpoint = (chain.export.manifest["config"].get("checkpoint") if chain.export else None)
    feeds = text_feeds(texts, checkpoint, max_len, vocab)
    lengths = np.array([f["input_ids"].shape[1] for f in feeds])
    console.info(f"  real text: {len(feeds)} texts at their own lengths (median {np.median(lengths):.0f} tokens, "
                 f"max {lengths.max()}), {len(dyn)} runtimes, interleaved")
    samples, window_s = interleave(dyn, feeds, cfg)
    passes = len(samples[dyn[0].name]) // len(feeds)
    agreement = {}
    if ref is not None:
        refs = [np.asarray(ref.fn(f), dtype=np.float64).ravel() for f in feeds]
        for r in dyn:
            cos = []
            for f, want in zip(feeds, refs):
                cos.append(cosine(np.asarray(r.fn(f), dtype=np.float64).ravel(), want))
            agreement[r.name] = {"min_cosine": min(cos), "mean_cosine": float(np.mean(cos))}
    rows = []
    for r in dyn:
        st = stats(samples[r.name])
        rows.append({"name": r.name, "mean_ms_per_text": st["mean_ms"], "stats": st,
                     "agreement": agreement.get(r.name)})
    out["text"] = {"source": source, "texts": len(feeds), "passes": passes, "window_s": round(window_s, 3),
                   "tokens": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                              "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max()),
                              "mean": float(lengths.mean())},
                   "reference": ref.name if ref else None, "rows": rows, "left_out": left_out}
    return out


def text_speedups(report: dict) -> list[dict]:
    """Mean ms per text of each squeezeedge library over each baseline of the real-text workload."""
    text = (report.get("workloads") or {}).get("text") or {}
    rows = text.get("rows") or []
    libs = [r for r in rows if r["name"].startswith("squeezeedge")]
    return [{"library": lib["name"], "baseline": b["name"], "ratio": lib["mean_ms_per_text"] / b["mean_ms_per_text"]}
            for lib in libs for b in rows if not b["name"].startswith("squeezeedge")]


def length_medians(report: dict) -> dict[str, dict[int, float]]:
    """{runtime: {length: median ms}} over the per-length sweep (the maximum from the main rows)."""
    lengths = (report.get("workloads") or {}).get("lengths") or {}
    out: dict[str, dict[int, float]] = {}
    for n, rows in (lengths.get("rows") or {}).items():
        if rows == "main":
            rows = [r for r in report["runtimes"] if r["status"] == "ok"
                    and r["name"] not in lengths.get("left_out", {})]
        for r in rows:
            out.setdefault(r["name"], {})[int(n)] = r["stats"]["median_ms"]
    return out
