"""Stage 2: fp32 ONNX + calibration text -> int8 QDQ ONNX, with a fidelity report that fails hard.

Scales and zero points come from onnxruntime.quantization.quantize_static (MinMax / Entropy /
Percentile calibrators); nothing here recomputes calibration statistics. What we add: real text as
calibration data, a seeded held-out split, a record of every quantized tensor for the TVM lowering, and
the fp32-vs-int8 fidelity check.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import StageRun, load_artifact, run_stage
from squeezeedge.stages.calibdata import DEFAULT_CORPUS, batches, load_tokenizer, read_texts, split
from squeezeedge.errors import InputError, ValidationError
from squeezeedge.options import check_config, option
from squeezeedge.stages.smoothquant import quantize_embeddings, smooth
from squeezeedge.targets import load_target

ONNX_FILE = "model.onnx"
PARAMS_FILE = "quant_params.json"
METHODS = ("minmax", "entropy", "percentile")
# The compute ops the TVM int8 lowering turns into integer kernels: SqueezeBERT's 1x1 convolutions, the
# attention matmuls and the classifier. Data-movement ops stay float (no extra QDQ pairs around them).
OP_TYPES = ("Conv", "MatMul", "Gemm")
# Histogram calibrators keep every intermediate output of every sample until the end
# (microsoft/onnxruntime#10503); feeding them in strides of this many samples bounds memory.
CALIB_STRIDE = 16
# SmoothQuant's migration strength (compiler/stages/smoothquant.py), chosen by measurement on trained MiniLM:
# 0.7 gave the best min cosine of 0.5-0.9 (results/int8-fidelity.md)
SMOOTH_QUANT_ALPHA = 0.7
# Layers that may be kept in float, to compare recipes. "gelu-out": the FFN output projections (fed by
# GELU). On trained MiniLM it once looked like the outlier site (mean cosine 0.940 -> 0.992), but what it
# removed were the quantizers on those layers' outputs; the default recipe keeps every layer integer.
KEEP_FLOAT = ("gelu-out",)


@dataclass(frozen=True)
class QuantizeConfig:
    """quantize's options, declared once (squeezeedge.options): the CLI's options, the pipeline file's
    [quantize] keys and their checks all come from these fields."""
    calibration_data: Path | None = option(
        None, "Texts to calibrate on: .txt (one per line), .jsonl (a 'text' field or --text-column), .csv/.tsv "
        "(--text-column, default 'text'). Default: calibration/sentences.txt (1,030 English sentences shipped "
        "with squeezeedge).", kind=Path)
    text_column: str | None = option(None, "Field or column holding the text (.jsonl/.csv/.tsv).")
    num_samples: int = option(128, "Texts used for calibration.", kind=int, low=1)
    num_heldout: int = option(64, "Other texts, never seen by calibration, on which fidelity is measured.",
                              kind=int, low=1)
    method: str = option("minmax", "onnxruntime calibration method for activation ranges.", choices=METHODS)
    per_channel: bool | None = option(
        None, "Weight scales per output channel or per tensor [default: the target's int8 preset].", kind=bool,
        flag="--per-channel/--per-tensor")
    activations: str | None = option(
        None, "Activation dtype [default: the target's int8 preset, e.g. uint8 for x86 VNNI].",
        choices=("uint8", "int8"))
    target: str = option("host", "Target whose int8 preset applies.", cli=False, in_file=False)
    target_file: Path | None = option(None, "A user's board TOML file.", kind=Path, cli=False, in_file=False)
    keep_float: tuple[str, ...] = option(
        (), "Leave these layers in float. gelu-out: the FFN output projections (fed by GELU). Not needed with "
        "the defaults; kept to compare recipes.", choices=KEEP_FLOAT, many="repeat")
    float_outputs: tuple[str, ...] = option(
        OP_TYPES, "Comma list of Conv, MatMul, Gemm (or 'none'): these layers multiply in integers but their "
        "outputs are not quantized (no rounding before the bias add; what trained models need: quantized "
        "MatMul outputs took trained MiniLM's mean cosine from 0.998 to 0.943).", choices=OP_TYPES,
        many="comma", none=True)
    smooth_quant: float | None = option(
        SMOOTH_QUANT_ALPHA, "SmoothQuant migration strength in (0, 1), or 'none': per-channel activation "
        "outliers, measured on the calibration texts, move into the weights of the layers reading them.",
        kind=float, low=0, high=1, open_range=True, none=True)
    int8_embeddings: bool = option(
        True, "Store embedding tables (Gather on a table of 1,024+ rows) as int8 with one scale a row.",
        kind=bool, flag="--int8-embeddings/--float-embeddings")
    fallback: bool = option(
        True, "Below --min-cosine/--min-agreement: rank the layers by measured sensitivity and keep the fewest "
        "in float that pass (named in the output and manifest). --no-fallback: fail.", kind=bool,
        flag="--fallback/--no-fallback")
    seed: int = option(0, "Seed of the calibration/held-out split.", kind=int)
    min_cosine: float = option(0.99, "Fail if the mean cosine similarity of fp32 and int8 outputs is below this.",
                               kind=float, low=0, high=1)
    min_agreement: float = option(
        0.9, "Fail if top-1 agreement is below this (argmax of logits; for embedding models, nearest-embedding "
        "retrieval).", kind=float, low=0, high=1)


def quantize_model(export_dir: Path, cfg: QuantizeConfig, out: Path, force: bool = False) -> StageRun:
    """Quantize an export artifact to int8 QDQ with onnxruntime, calibrated on real text.

    Args:
        export_dir: an artifact written by ``export``.
        cfg: calibration data, method, int8 scheme (defaults from the target's preset), thresholds.
        out: the artifact directory to write (model.onnx, quant_params.json, manifest.json).
        force: rerun even when ``out`` already holds this exact result.

    Returns:
        StageRun; ``results`` holds the data record, the resolved scheme and the fidelity numbers.

    Raises:
        ArtifactError: ``export_dir`` is not an export artifact.
        CalibrationError: unusable calibration data (missing, empty, not UTF-8, too few texts, ...).
        ValidationError: fidelity below ``min_cosine`` or ``min_agreement`` (nothing is written).
    """
    check_config(cfg)
    parent = load_artifact(export_dir, stage="export")
    target = load_target(cfg.target, cfg.target_file)
    scheme = _scheme(cfg, target)
    corpus = read_texts(cfg.calibration_data or DEFAULT_CORPUS, cfg.text_column)
    calib, heldout = split(corpus.texts, cfg.num_samples, cfg.num_heldout, cfg.seed, corpus.path)
    batch, seq_len = parent.manifest["config"]["batch"], parent.manifest["config"]["seq_len"]
    if len(calib) % batch or len(heldout) % batch:
        raise InputError(f"--num-samples and --num-heldout must be multiples of the exported batch size {batch}")
    tok, tok_info = load_tokenizer(parent.manifest["config"].get("checkpoint"), seq_len)
    dynamic = any(not isinstance(d, int) for i in parent.results["inputs"] for d in i["shape"])
    key = {
        "method": cfg.method, "num_samples": cfg.num_samples, "num_heldout": cfg.num_heldout, "seed": cfg.seed,
        "scheme": scheme, "min_cosine": cfg.min_cosine, "min_agreement": cfg.min_agreement,
        "data_sha256": corpus.sha256, "text_column": corpus.column, "tokenizer_sha256": tok_info.sha256,
        "calib_stride": CALIB_STRIDE, "fallback": cfg.fallback,
    }
    data = {"path": str(corpus.path), "sha256": corpus.sha256, "format": corpus.format, "column": corpus.column,
            "records": corpus.records, "usable": len(corpus.texts), "calibration": len(calib),
            "heldout": len(heldout), "seed": cfg.seed, "tokenizer": asdict(tok_info)}
    zero = " (zero point 0)" if scheme["activations"] == "int8" and scheme["symmetric_activations"] else ""
    console.info(f"  quantize: {cfg.method}, {scheme['activations']} activations{zero} x {scheme['weights']} weights"
                 f"{' (7-bit)' if scheme['weight_bits'] == 7 else ''}, "
                 f"{'per-channel' if scheme['per_channel'] else 'per-tensor'} (preset {target.name}); "
                 f"{len(calib)} calibration / {len(heldout)} held-out texts from {corpus.path.name}")

    def work(tmp: Path) -> dict:
        return {"data": data} | _quantize_and_check(parent, cfg, scheme, tok, calib, heldout, dynamic, tmp)

    return run_stage("quantize", out, key, work, parent=parent, force=force)


def _scheme(cfg: QuantizeConfig, target) -> dict:
    """The int8 scheme: the target's preset, with what ``cfg`` overrides."""
    return {
        "activations": cfg.activations or target.int8.activations,
        "weights": target.int8.weights,
        "weight_bits": target.int8.weight_bits,
        "symmetric_activations": target.int8.symmetric_activations,
        "per_channel": target.int8.per_channel if cfg.per_channel is None else cfg.per_channel,
        "preset": target.name,
        "preset_reason": target.int8.reason,
        "op_types": list(OP_TYPES),
        "keep_float": sorted(set(cfg.keep_float)),
        # layers whose outputs are not quantized (onnxruntime's OpTypesToExcludeOutputQuantization); their
        # multiply-adds stay integer, with a float output (no rounding before the bias add). Default: all.
        # Quantized, trained MiniLM's FFN output projection rounds [-2.3, 195.7] in steps of 0.78 (mean
        # cosine 0.943 with SmoothQuant, 0.9975 without output quantizers), and a classifier's logits round
        # to a handful of steps (seeded-random SqueezeBERT: outputs [0, 0], cosine 0)
        "float_outputs": sorted(set(cfg.float_outputs)),
        "smooth_quant_alpha": cfg.smooth_quant,
        "embeddings": "int8 per row" if cfg.int8_embeddings else "float",
    }


def _quantize_and_check(parent, cfg: QuantizeConfig, scheme: dict, tok, calib: list, heldout: list, dynamic: bool,
                        tmp: Path) -> dict:
    """Calibrate and quantize into ``tmp``, measure fidelity on the held-out texts (falling back to float
    for the most sensitive layers if allowed and needed), and fail below the gate; returns the results."""
    import tempfile

    batch, seq_len = parent.manifest["config"]["batch"], parent.manifest["config"]["seq_len"]
    vocab = parent.results["model_config"]["vocab_size"]
    # a --dynamic export calibrates and is measured on each text at its own length: padding would put
    # [PAD] positions' activations into the ranges, and real text is short (median 14 tokens here)
    feeds_cal = batches(tok, calib, vocab, batch, own_length=dynamic)
    feeds_eval = batches(tok, heldout, vocab, batch, own_length=dynamic)
    head, fp32 = parent.results["head"], parent.file(ONNX_FILE)
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        with console.step(f"calibrating ({cfg.method}) and quantizing with onnxruntime"):
            float_layers, rewrites = _quantize(fp32, tmp, feeds_cal, cfg.method, scheme, Path(scratch))
        if rewrites["smoothed_groups"] or rewrites["int8_tables"]:
            console.info(f"  SmoothQuant (alpha {scheme['smooth_quant_alpha']}): {rewrites['smoothed_groups']} "
                         f"layer groups; int8 embedding tables: {len(rewrites['int8_tables'])}")
        with console.step("measuring fidelity on held-out texts (fp32 vs int8, onnxruntime)"):
            ref = outputs(fp32, feeds_eval, head)
            fid = compare(ref, outputs(tmp / ONNX_FILE, feeds_eval, head), head)
        fallback = None
        if cfg.fallback and _failure(fid, cfg):
            console.info(fidelity_table(fid, cfg))
            fallback = _fallback(tmp / ONNX_FILE, Path(scratch) / "pre.onnx", fp32, feeds_cal[:32], feeds_eval,
                                 ref, head, cfg)
            if fallback["layers"]:
                fid = compare(ref, outputs(tmp / ONNX_FILE, feeds_eval, head), head)
                float_layers += len(fallback["layers"])
    params = quant_record(tmp / ONNX_FILE)
    (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    fid["tokens"] = _token_counts(feeds_eval, "own length" if dynamic else f"padded to {seq_len}")
    console.info(fidelity_table(fid, cfg))
    _check(fid, cfg, fallback)
    return {"scheme": scheme, "method": cfg.method, "fidelity": fid,
            "quantized_tensors": len(params["tensors"]), "float_layers": float_layers, **rewrites,
            "fallback": fallback, "head": head,
            "fp32_bytes": fp32.stat().st_size, "int8_bytes": (tmp / ONNX_FILE).stat().st_size,
            "inputs": parent.results["inputs"], "outputs": parent.results["outputs"],
            "model_config": parent.results["model_config"]}


def _token_counts(feeds: list[dict], how: str) -> dict:
    """Real (mask-1) tokens per text of the measured feeds, and how they ran."""
    import numpy as np

    real = np.concatenate([f["attention_mask"].sum(1) for f in feeds])
    return {"ran_at": how, "median": float(np.median(real)), "p90": float(np.percentile(real, 90)),
            "max": int(real.max())}


class _Reader:
    """onnxruntime CalibrationDataReader over pre-tokenized batches, with strided ranges."""

    def __init__(self, feeds: list[dict]):
        self.batches = feeds
        self.set_range(0, len(self.batches))

    def __len__(self):
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int):
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self.set_range(0, len(self.batches))


def _quantize(src: Path, tmp: Path, feeds: list[dict], method: str, scheme: dict, scratch: Path) -> tuple[int, dict]:
    """Rewrite the graph (SmoothQuant, int8 embedding tables) into scratch/pre.onnx, then run onnxruntime's
    calibration and QDQ quantization into tmp; returns how many layers stay float, and what the rewrites did."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _Reader(feeds)
    stride = next(s for s in (CALIB_STRIDE, 8, 4, 2, 1) if len(reader) % s == 0)
    if method != "minmax" and len({f["input_ids"].shape for f in feeds}) > 1:
        # texts at their own lengths: onnxruntime's histogram collector stacks a stride's outputs into one
        # array (np.asarray), which fails on unequal shapes; one text a stride stacks one array
        stride = 1
    # onnxruntime's histogram calibrators print progress on stdout, which belongs to --json: send it to stderr
    with console.quiet_warnings(), \
            contextlib.redirect_stdout(sys.stderr if console.VERBOSITY >= 2 else io.StringIO()):
        pre = scratch / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        rewrites = {"smoothed_groups": smooth(model, feeds, scheme["smooth_quant_alpha"])
                    if scheme.get("smooth_quant_alpha") else 0,
                    "int8_tables": quantize_embeddings(model) if scheme.get("embeddings", "float") != "float" else []}
        onnx.save(model, str(pre))
        exclude = gelu_consumers(pre, scheme["op_types"]) if "gelu-out" in scheme["keep_float"] else []
        if exclude:
            console.info(f"  keeping {len(exclude)} GELU-fed layers in float (--keep-float gelu-out)")
        quantize_static(
            str(pre), str(tmp / ONNX_FILE), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(scheme["op_types"]),
            nodes_to_exclude=exclude,
            per_channel=scheme["per_channel"],
            reduce_range=scheme.get("weight_bits", 8) == 7,  # weights in [-64, 64]
            activation_type=QuantType.QUInt8 if scheme["activations"] == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={
                "CalibStridedMinMax": stride,  # applies to every calibrator: bounds memory (ORT #10503)
                # s8 x s8 dot products with no zero point, or the preset's calibrated one (u8: always)
                "ActivationSymmetric": scheme["activations"] == "int8" and scheme.get("symmetric_activations", True),
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": list(scheme.get("float_outputs", [])),
            },
        )
    return len(exclude), rewrites


def gelu_consumers(path: Path, op_types) -> list[str]:
    """Names of the compute nodes whose data input comes from a GELU (Gelu op, or the Erf form)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}

    def from_gelu(name: str, depth: int = 0) -> bool:
        node = producer.get(name)
        if node is None or depth > 4:
            return False
        if node.op_type in ("Gelu", "Erf"):
            return True
        if node.op_type in ("Mul", "Add", "Div", "Reshape", "Transpose", "Cast"):
            return any(from_gelu(i, depth + 1) for i in node.input[:2])
        return False

    return [n.name for n in graph.node if n.op_type in op_types and from_gelu(n.input[0])]


def quant_record(path: Path) -> dict:
    """Every QuantizeLinear/DequantizeLinear tensor: scale(s), zero point(s), dtype, axis, role."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    tensors = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        x, scale, zp = node.input[0], inits[node.input[1]], inits[node.input[2]] if len(node.input) > 2 else None
        name = node.output[0] if node.op_type == "QuantizeLinear" else x
        if name in tensors:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        tensors[name] = {
            "float_tensor": x if node.op_type == "QuantizeLinear" else None,
            "role": ("bias" if inits[x].dtype.name == "int32" else "weight") if x in inits else "activation",
            "dtype": str(zp.dtype) if zp is not None else "uint8",
            "scale": scale.reshape(-1).tolist(),
            "zero_point": zp.reshape(-1).tolist() if zp is not None else [0],
            "axis": axis if scale.size > 1 else None,
        }
    return {"format": "QDQ", "tensors": tensors}


def reference_session(path: Path):
    """onnxruntime running a QDQ model op by op as ONNX defines it (DequantizeLinear -> float op ->
    QuantizeLinear): the reference for integer kernels. onnxruntime's own fused u8 x s8 kernels use
    vpmaddubsw on x86 CPUs without VNNI, whose int16 pair sums saturate (its docs say so), so their
    answer depends on the CPU; this one does not."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def outputs(model, feeds: list[dict], head: str):
    """The model's output (logits or sentence embedding) on every feed, as [samples, features] float64.
    ``model``: a path or serialized ONNX bytes."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), ort.SessionOptions(),
                                providers=["CPUExecutionProvider"])
    name = "logits" if head == "classify" else "sentence_embedding"
    out = np.concatenate([sess.run([name], f)[0] for f in feeds])
    return out.reshape(len(out), -1).astype(np.float64)


def compare(a, b, head: str) -> dict:
    """fp32 outputs ``a`` vs int8 outputs ``b``: max abs error, cosine per sample, top-1 agreement.

    Top-1 agreement is the argmax of the logits for a classifier; for an embedding model it is
    retrieval: the int8 embedding's nearest fp32 embedding (by cosine) is its own text's.
    """
    import numpy as np

    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
    if head == "classify":
        agree = float(np.mean(a.argmax(1) == b.argmax(1)))
    else:
        sim = (b / nb[:, None]) @ (a / na[:, None]).T
        agree = float(np.mean(sim.argmax(1) == np.arange(len(a))))
    return {"samples": len(a), "max_abs_error": float(np.max(np.abs(a - b))),
            "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "top1_agreement": agree,
            "agreement_kind": "argmax of logits" if head == "classify" else "nearest-embedding retrieval"}


def _fallback(int8: Path, pre: Path, fp32: Path, feeds_rank, feeds_eval, ref_eval, head: str, cfg) -> dict:
    """Keep the fewest, most sensitive layers of ``int8`` in float that pass the gate (rewrites it)."""
    import onnx
    from onnx import numpy_helper

    from squeezeedge.stages.fallback import quantized_layers, search

    model = onnx.load(str(int8))
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(pre)).graph.initializer}
    ref_rank = outputs(fp32, feeds_rank, head)
    total = len(quantized_layers(model))
    with console.step(f"below the gate: ranking {total} layers by sensitivity on {len(feeds_rank)} calibration "
                      "texts, then keeping the fewest in float that pass"):
        kept, ranking = search(model, weights,
                               lambda b: compare(ref_rank, outputs(b, feeds_rank, head), head)["mean_cosine"],
                               lambda b: _failure(compare(ref_eval, outputs(b, feeds_eval, head), head), cfg) is None,
                               max_layers=total // 2)
    if kept:
        onnx.save(model, str(int8))
        console.info(f"  kept {len(kept)} of {total} layers in float: {', '.join(kept)}")
    return {"layers": kept, "quantized_layers": total, "ranked_on": f"{len(feeds_rank)} calibration texts",
            "ranking": [{"layer": r["layer"], "gain": round(r["gain"], 6)} for r in ranking[:10]]}


def fidelity_table(fid: dict, cfg: QuantizeConfig) -> str:
    rows = [("max abs error", f"{fid['max_abs_error']:.4g}", ""),
            ("mean cosine", f"{fid['mean_cosine']:.5f}", f">= {cfg.min_cosine}"),
            ("min cosine", f"{fid['min_cosine']:.5f}", ""),
            (f"top-1 agreement ({fid['agreement_kind']})", f"{fid['top1_agreement']:.3f}", f">= {cfg.min_agreement}")]
    w = max(len(r[0]) for r in rows)
    tok = fid.get("tokens")
    at = f" ({tok['ran_at']}: median {tok['median']:g} tokens, max {tok['max']})" if tok else ""
    return "\n".join([f"  fidelity, fp32 vs int8 on {fid['samples']} held-out texts{at}"] +
                     [f"    {n:<{w}}  {v:>10}  {lim}" for n, v, lim in rows])


def _failure(fid: dict, cfg: QuantizeConfig) -> str | None:
    """Why ``fid`` misses the gate, or None."""
    if not fid["mean_cosine"] >= cfg.min_cosine:
        return f"mean cosine {fid['mean_cosine']:.4f} < --min-cosine {cfg.min_cosine}"
    if not fid["top1_agreement"] >= cfg.min_agreement:
        return f"top-1 agreement {fid['top1_agreement']:.3f} < --min-agreement {cfg.min_agreement}"
    return None


def _check(fid: dict, cfg: QuantizeConfig, fallback: dict | None = None) -> None:
    why = _failure(fid, cfg)
    if why is None:
        return
    if fallback is not None:
        raise ValidationError(f"int8 fidelity too low: {why}, even with up to {fallback['quantized_layers'] // 2} of "
                              f"{fallback['quantized_layers']} layers kept in float")
    hint = "" if cfg.fallback else " (without --no-fallback the most sensitive layers would be kept in float)"
    raise ValidationError(f"int8 fidelity too low: {why}{hint}")
