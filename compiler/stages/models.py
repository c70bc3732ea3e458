"""Model presets and local checkpoints, wrapped so every export has the same inputs and named outputs.

No model hub is reachable: presets are seeded random init of a published configuration; real weights
come from a local Hugging Face directory (safetensors, or a .bin read with weights_only=True).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from squeezeedge.artifact import sha256_file
from squeezeedge.errors import InputError

# The published squeezebert/squeezebert-uncased config.json (51.1M parameters with a 2-label head).
SQUEEZEBERT_UNCASED = dict(
    vocab_size=30528, hidden_size=768, embedding_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, q_groups=4, k_groups=4,
    v_groups=4, post_attention_groups=1, intermediate_groups=4, output_groups=4, layer_norm_eps=1e-12,
)
# Same shape of network, small enough for tests (2 layers, hidden 64): about 2.0M parameters, most in
# the embedding table, which keeps the real vocabulary so real tokenized text is valid input.
SQUEEZEBERT_TINY = dict(
    SQUEEZEBERT_UNCASED, hidden_size=64, embedding_size=64, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=128, max_position_embeddings=128,
)
PRESETS = {"squeezebert-uncased": SQUEEZEBERT_UNCASED, "squeezebert-tiny": SQUEEZEBERT_TINY}
SUPPORTED_TYPES = ("squeezebert", "bert")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
HEADS = ("classify", "embed")  # classify -> "logits" [B, labels]; embed -> "sentence_embedding" [B, H]


@dataclass(frozen=True)
class ModelSpec:
    """What to export: a preset with seeded init, or a local checkpoint directory."""

    model: str | None  # preset name (None when a checkpoint is given)
    checkpoint: Path | None
    head: str  # "auto" | "classify" | "embed"
    num_labels: int
    seed: int


def checkpoint_fingerprint(path: Path) -> dict:
    """sha256 of every file in a checkpoint directory: part of the export cache key."""
    return {p.name: sha256_file(p) for p in sorted(Path(path).iterdir()) if p.is_file()}


def read_config(spec: ModelSpec):
    """The transformers config for a spec, validated. Raises InputError with a one-line reason."""
    from transformers import AutoConfig, SqueezeBertConfig

    if spec.checkpoint is None:
        if spec.model not in PRESETS:
            raise InputError(f"unknown model preset '{spec.model}' (known: {', '.join(PRESETS)})")
        return SqueezeBertConfig(num_labels=spec.num_labels, **PRESETS[spec.model])
    ckpt = Path(spec.checkpoint)
    if not ckpt.is_dir():
        raise InputError(f"checkpoint {ckpt} is not a directory")
    if not (ckpt / "config.json").is_file():
        raise InputError(f"checkpoint {ckpt} has no config.json (expected a Hugging Face model directory)")
    try:
        raw = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"checkpoint {ckpt}: config.json is not valid JSON: {exc}") from None
    if raw.get("model_type") not in SUPPORTED_TYPES:
        raise InputError(
            f"checkpoint {ckpt}: model_type '{raw.get('model_type')}' is not supported "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = AutoConfig.from_pretrained(str(ckpt), local_files_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint {ckpt}: config.json is not a valid config: {str(exc).splitlines()[0]}") from None
    if resolve_head(spec, config) == "classify" and "num_labels" not in raw and "id2label" not in raw:
        config.num_labels = spec.num_labels
    return config


def resolve_head(spec: ModelSpec, config) -> str:
    if spec.head != "auto":
        return spec.head
    if spec.checkpoint is None:
        return "classify"
    archs = getattr(config, "architectures", None) or []
    return "classify" if any(a.endswith("ForSequenceClassification") for a in archs) else "embed"


def _weights_file(ckpt: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (ckpt / name).is_file():
            return ckpt / name
    raise InputError(f"checkpoint {ckpt} has no model.safetensors or pytorch_model.bin")


def _bin_to_safetensors(ckpt: Path, tmp: Path) -> Path:
    """Copy a .bin checkpoint to a safetensors one, unpickling with weights_only=True (no code runs)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(ckpt / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint {ckpt}: pytorch_model.bin is not a plain tensor file ({exc})") from None
    save_file({k: v.contiguous().clone() for k, v in state.items()}, tmp / "model.safetensors")
    shutil.copy(ckpt / "config.json", tmp / "config.json")
    return tmp


def build_torch_model(spec: ModelSpec):
    """(wrapped eval-mode torch module, config, head, load report). Outputs are a 1-tuple (logits|embedding)."""
    import torch
    from transformers import (BertForSequenceClassification, BertModel, SqueezeBertForSequenceClassification,
                              SqueezeBertModel)

    config = read_config(spec)
    head = resolve_head(spec, config)
    classes = {
        ("squeezebert", "classify"): SqueezeBertForSequenceClassification,
        ("squeezebert", "embed"): SqueezeBertModel,
        ("bert", "classify"): BertForSequenceClassification,
        ("bert", "embed"): BertModel,
    }
    cls = classes[(config.model_type, head)]
    report: dict = {"missing_keys": [], "source": "seeded random init" if spec.checkpoint is None else "checkpoint"}
    torch.manual_seed(spec.seed)
    if spec.checkpoint is None:
        model = cls(config)
        _perturb_init(model)
    else:
        ckpt = Path(spec.checkpoint)
        weights = _weights_file(ckpt)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with tempfile.TemporaryDirectory() as tmp:
            src = _bin_to_safetensors(ckpt, Path(tmp)) if weights.suffix == ".bin" else ckpt
            try:
                model, info = cls.from_pretrained(
                    str(src), config=config, use_safetensors=True, local_files_only=True, output_loading_info=True
                )
            except Exception as exc:
                raise InputError(f"checkpoint {ckpt}: cannot load weights: {str(exc).splitlines()[0]}") from None
        missing = sorted(info.get("missing_keys", []))
        report["missing_keys"] = missing
        body = [k for k in missing if not k.startswith(("classifier", "pooler"))]
        if body:
            raise InputError(f"checkpoint {ckpt}: {len(body)} weights missing from the file (e.g. {body[0]})")
    return Wrapped(model, head).eval(), config, head, report


def _perturb_init(model) -> None:
    """Give biases and LayerNorm weights seeded small random values instead of HF's exact 0 and 1.

    Exact zeros let the ONNX optimizer drop every bias add, so a preset export would skip code paths
    (bias adds, int32 bias in QDQ) that every real checkpoint takes.
    """
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)
            elif "LayerNorm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.02)


def _wrapped_class():
    import torch

    class Wrapped(torch.nn.Module):
        """Fixed signature (input_ids, attention_mask, token_type_ids) -> (logits,) or (embedding,)."""

        def __init__(self, model, head: str):
            super().__init__()
            self.model, self.head = model, head

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            if self.head == "classify":
                return (out.logits,)
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return (pooled,)

    # The exported ONNX names this class in every node's namespace, so its bytes (the model's sha256, which
    # the shipped tuning databases are keyed on) would change whenever this module moves: a fixed name,
    # the one it had when the databases were made (compiler/models.py).
    Wrapped.__module__, Wrapped.__qualname__ = "compiler.models", "_wrapped_class.<locals>.Wrapped"
    return Wrapped


def Wrapped(model, head):  # noqa: N802 - built lazily so importing this module does not import torch
    return _wrapped_class()(model, head)


def output_name(head: str) -> str:
    return "logits" if head == "classify" else "sentence_embedding"  # "embedding" clashes with BERT's node names
