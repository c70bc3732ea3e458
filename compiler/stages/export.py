"""Stage 1: PyTorch SqueezeBERT (preset or local checkpoint) -> validated ONNX."""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from squeezeedge import console
from squeezeedge.artifact import StageRun, run_stage
from squeezeedge.errors import ExportError, InputError, ValidationError
from squeezeedge.options import check_config, option
from squeezeedge.runtime import random_inputs
from squeezeedge.stages.models import INPUT_NAMES, ModelSpec, build_torch_model, checkpoint_fingerprint, output_name, read_config

ONNX_FILE = "model.onnx"
OPSET = 18  # the dynamo exporter's opset; TVM 0.27 imports its static-shape output cleanly (TVM-NOTES)


@dataclass(frozen=True)
class ExportConfig:
    """export's options, declared once (squeezeedge.options): the CLI's options and the pipeline file's
    [model] keys come from these fields."""
    model: str = option("squeezebert-uncased", "Preset: squeezebert-uncased (published config, 51.1M params, "
                        "seeded random init) or squeezebert-tiny (2 layers, hidden 64, for tests). Ignored with "
                        "--checkpoint.", key="preset")
    checkpoint: Path | None = option(None, "A local Hugging Face model directory (config.json + model.safetensors, "
                                     "or pytorch_model.bin read with weights_only=True). model_type squeezebert "
                                     "or bert.", kind=Path)
    head: str = option("auto", "classify: output 'logits'. embed: output 'sentence_embedding' (mask-mean-pooled "
                       "last hidden state, for sentence-embedding models). auto: classify for presets and "
                       "checkpoints whose architecture is *ForSequenceClassification, else embed.",
                       choices=("auto", "classify", "embed"))
    num_labels: int = option(2, "Classifier outputs (classify head).", kind=int, low=1)
    batch: int = option(1, "Static batch size.", kind=int, low=1)
    seq_len: int = option(128, "Sequence length; with --dynamic the longest a library built from it takes.",
                          kind=int)
    seed: int = option(0, "Seed of the random init and test inputs.", kind=int)
    dynamic: bool = option(False, "Any length: dynamic batch and sequence axes; build makes ONE library that "
                           "takes every length 1..--seq-len (buckets 12 or 16, 20, 24, 32, 40, 48, ... sharing one "
                           "copy of the weights). A pipeline file's default is true.", kind=bool, flag="--dynamic")
    tolerance: float = option(1e-4, "Fail if onnxruntime differs from PyTorch by more than this (max abs).",
                              kind=float, low=0)
    validation_runs: int = 3

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model if self.checkpoint is None else None, self.checkpoint, self.head,
                         self.num_labels, self.seed)


def validate_config(cfg: ExportConfig):
    """Check everything that can be checked before work starts; returns the transformers config."""
    check_config(cfg)
    config = read_config(cfg.spec())
    if not 0 < cfg.seq_len <= config.max_position_embeddings:
        raise InputError(f"--seq-len must be in 1..{config.max_position_embeddings} for this model, got {cfg.seq_len}")
    return config


def export_model(cfg: ExportConfig, out: Path, force: bool = False) -> StageRun:
    """Export a SqueezeBERT (or BERT) model to ONNX and validate it against PyTorch with onnxruntime.

    Args:
        cfg: what to export and at which static shape.
        out: the artifact directory to write (model.onnx + manifest.json).
        force: rerun even when ``out`` already holds this exact export.

    Returns:
        StageRun with the artifact; ``results`` holds parameter count, sizes and the max abs difference.

    Raises:
        InputError: unknown preset, bad checkpoint, out-of-range shapes.
        ValidationError: onnxruntime and PyTorch disagree by more than ``cfg.tolerance``.
        OutputError: ``out`` cannot be written.
    """
    validate_config(cfg)
    key = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    key["opset"] = OPSET
    if cfg.checkpoint is not None:
        key["checkpoint_files"] = checkpoint_fingerprint(cfg.checkpoint)
    return run_stage("export", out, key, lambda tmp: _export(cfg, tmp), force=force)


def _export(cfg: ExportConfig, tmp: Path) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    with console.step("building the PyTorch model"):
        model, config, head, report = build_torch_model(cfg.spec())
    params = sum(p.numel() for p in model.parameters())
    console.info(f"  {config.model_type}, {head} head, {params / 1e6:.1f}M parameters")
    out_name = output_name(head)
    example = random_inputs(config.vocab_size, config.type_vocab_size, cfg.batch, cfg.seq_len, cfg.seed)
    args = tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES)
    dynamic_shapes = None
    if cfg.dynamic:
        dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("seq", min=2,
                                                                                 max=config.max_position_embeddings)}
        dynamic_shapes = {"input_ids": dims, "attention_mask": dims, "token_type_ids": dims}
    path = tmp / ONNX_FILE
    with console.step("exporting to ONNX (torch.export, opset %d)" % OPSET):
        chatter = io.StringIO()
        with torch.no_grad(), contextlib.redirect_stdout(chatter), console.quiet_warnings():
            try:
                program = torch.onnx.export(
                    model, args, input_names=list(INPUT_NAMES), output_names=[out_name], dynamo=True,
                    opset_version=OPSET, dynamic_shapes=dynamic_shapes,
                )
                program.save(str(path), external_data=False)
                _drop_stack_traces(path)
                onnx.checker.check_model(str(path))
            except Exception as exc:
                raise ExportError(f"torch.onnx.export failed: {_first_line(exc)}") from exc
        console.debug(chatter.getvalue())

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = [(cfg.batch, cfg.seq_len)]
    if cfg.dynamic:
        shapes.append((cfg.batch + 1, max(2, cfg.seq_len // 2)))
    diffs = []
    with console.step(f"validating with onnxruntime on {cfg.validation_runs * len(shapes)} random inputs"):
        for b, s in shapes:
            for i in range(cfg.validation_runs):
                feed = random_inputs(config.vocab_size, config.type_vocab_size, b, s, cfg.seed + 1000 + i)
                with torch.no_grad():
                    ref = model(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES))[0].numpy()
                got = sess.run([out_name], feed)[0]
                diffs.append(float(np.max(np.abs(got - ref))))
    max_diff = max(diffs)
    if not max_diff <= cfg.tolerance:  # also catches NaN
        raise ValidationError(
            f"onnxruntime and PyTorch disagree: max abs diff {max_diff:.3g} > tolerance {cfg.tolerance:g}"
        )
    proto = onnx.load(str(path), load_external_data=False)
    io_sig = {
        "inputs": [_value_info(v) for v in proto.graph.input],
        "outputs": [_value_info(v) for v in proto.graph.output],
    }
    return {
        "model_type": config.model_type,
        "head": head,
        "parameters": params,
        "onnx_bytes": path.stat().st_size,
        "opset": OPSET,
        "validation": {"runs": len(diffs), "max_abs_diff": max_diff, "tolerance": cfg.tolerance},
        "model_config": config.to_diff_dict() | {"model_type": config.model_type},
        "weights": report,
        **io_sig,
    }


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(path: Path) -> None:
    """Remove the exporter's per-node Python stack traces: they hold the absolute paths of this checkout and
    its venv, so the same model exported from another directory had another sha256 (and the shipped tuning
    databases, keyed on it, were refused on CI's checkout). Namespaces and fx names stay for debugging."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graphs = [proto.graph] + [f for f in proto.functions]
    for g in graphs:
        for node in g.node:
            keep = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    onnx.save(proto, str(path))


def _value_info(v) -> dict:
    import onnx

    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
