"""End-to-end export through the CLI on the tiny preset, checked against PyTorch with real numbers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from squeezeedge.artifact import sha256_file
from squeezeedge.runtime import random_inputs
from squeezeedge.stages.models import SQUEEZEBERT_TINY

from ..conftest import TINY_SEQ, cli, manifest


def test_export_writes_valid_onnx_with_manifest(tiny_export):
    m = manifest(tiny_export)
    onnx.checker.check_model(str(tiny_export / "model.onnx"))
    proto = onnx.load(str(tiny_export / "model.onnx"))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, TINY_SEQ]  # static shapes
    assert m["stage"] == "export" and m["schema_version"] == 1 and m["parent"] is None
    assert m["files"]["model.onnx"] == sha256_file(tiny_export / "model.onnx")
    assert m["results"]["validation"]["max_abs_diff"] < 1e-4
    assert m["results"]["validation"]["runs"] >= 3
    assert 1.9e6 < m["results"]["parameters"] < 2.1e6
    for tool in ("torch", "onnx", "onnxruntime", "apache-tvm"):
        assert m["versions"][tool]
    assert m["wall_time_s"] > 0 and m["peak_rss_mb"] > 0
    assert m["config"]["seq_len"] == TINY_SEQ and m["config"]["model"] == "squeezebert-tiny"


def test_exported_model_matches_seeded_pytorch(tiny_export):
    """Rebuild the same seeded model independently and compare logits on a fresh input."""
    from transformers import SqueezeBertConfig, SqueezeBertForSequenceClassification

    from squeezeedge.stages.models import _perturb_init

    torch.manual_seed(0)
    ref_model = SqueezeBertForSequenceClassification(SqueezeBertConfig(num_labels=2, **SQUEEZEBERT_TINY)).eval()
    _perturb_init(ref_model)
    feed = random_inputs(30528, 2, 1, TINY_SEQ, seed=123)
    with torch.no_grad():
        ref = ref_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    got = ort.InferenceSession(str(tiny_export / "model.onnx")).run(None, feed)[0]
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_export_holds_no_path_of_this_machine(tiny_export):
    """The same model exported in another checkout (CI's) has the same sha256, so shipped databases fit it."""
    import sys
    from pathlib import Path

    data = (tiny_export / "model.onnx").read_bytes()
    for where in (Path(__file__).resolve().parents[2], Path(sys.prefix), Path(torch.__file__).parent):
        assert str(where).encode() not in data, where


def test_rerun_skips_and_force_reruns(tiny_export):
    before = manifest(tiny_export)
    res = cli("export", "--model", "squeezebert-tiny", "--seq-len", TINY_SEQ, "--out", tiny_export)
    assert res.exit_code == 0
    assert "skipped" in res.stdout and "--force" in res.stderr
    assert manifest(tiny_export)["created"] == before["created"]
    res = cli("--json", "-q", "export", "--model", "squeezebert-tiny", "--seq-len", TINY_SEQ, "--out",
              tiny_export, "--force")
    assert res.exit_code == 0
    payload = json.loads(res.stdout)
    assert payload["skipped"] is False
    assert payload["manifest"]["artifact_sha256"] == before["artifact_sha256"]  # deterministic export


def test_inspect_tells_the_story_and_catches_tampering(tiny_export, tmp_path):
    res = cli("inspect", tiny_export)
    assert res.exit_code == 0
    assert "'export' artifact" in res.stdout and "max_abs_diff" in res.stdout and "sha256 verified" in res.stdout
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    res = cli("inspect", copy)
    assert res.exit_code == 5
    assert "model.onnx does not match its sha256" in res.stderr


def test_checkpoint_directory_safetensors_and_bin(tmp_path):
    """A local HF directory (safetensors, and .bin read with weights_only) exports the same network."""
    from transformers import SqueezeBertConfig, SqueezeBertForSequenceClassification

    torch.manual_seed(7)
    cfg = SqueezeBertConfig(num_labels=3, **SQUEEZEBERT_TINY)
    cfg.architectures = ["SqueezeBertForSequenceClassification"]
    model = SqueezeBertForSequenceClassification(cfg).eval()
    st_dir, bin_dir = tmp_path / "st", tmp_path / "bin"
    model.save_pretrained(st_dir)
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((st_dir / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    feed = random_inputs(cfg.vocab_size, 2, 1, 16, seed=5)
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    for src in (st_dir, bin_dir):
        out = tmp_path / f"out-{src.name}"
        res = cli("-q", "export", "--checkpoint", src, "--seq-len", 16, "--out", out)
        assert res.exit_code == 0, res.output
        got = ort.InferenceSession(str(out / "model.onnx")).run(None, feed)[0]
        assert got.shape == (1, 3)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
        assert manifest(out)["config"]["checkpoint_files"]  # checkpoint content is part of the cache key


@pytest.mark.parametrize("args, code, words", [
    (["--model", "squeezebert-huge"], 3, "unknown model preset 'squeezebert-huge'"),
    (["--model", "squeezebert-tiny", "--seq-len", "0"], 3, "--seq-len must be in 1..128"),
    (["--model", "squeezebert-tiny", "--seq-len", "129"], 3, "--seq-len must be in 1..128"),
    (["--model", "squeezebert-tiny", "--batch", "0"], 3, "--batch must be >= 1"),
])
def test_bad_export_arguments(tmp_path, args, code, words):
    out = tmp_path / "out"
    res = cli("export", *args, "--out", out)
    assert res.exit_code == code
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_checkpoint_without_config(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    out = tmp_path / "out"
    res = cli("export", "--checkpoint", ckpt, "--out", out)
    assert res.exit_code == 3
    assert "has no config.json" in res.stderr
    assert not out.exists()


def test_checkpoint_of_unsupported_architecture(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "gpt2"}')
    res = cli("export", "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert res.exit_code == 3 and "model_type 'gpt2' is not supported" in res.stderr


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "out"  # a directory under a regular file can never be created
    res = cli("export", "--model", "squeezebert-tiny", "--out", out)
    assert res.exit_code == 7
    assert "cannot create" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_refuses_to_replace_a_directory_that_is_not_an_artifact(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("do not delete")
    res = cli("export", "--model", "squeezebert-tiny", "--out", out)
    assert res.exit_code == 7 and "is not a squeezeedge artifact" in res.stderr
    assert (out / "precious.txt").read_text() == "do not delete"
