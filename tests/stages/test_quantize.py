"""Quantize the tiny model end to end from every input format; check int8-ness, records and fidelity."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from squeezeedge.artifact import sha256_file
from squeezeedge.stages.calibdata import DEFAULT_CORPUS, encode, load_tokenizer, read_texts, split

from ..conftest import FAST_Q, TINY_SEQ, cli, manifest

FAST = FAST_Q
TEXTS = [line for line in DEFAULT_CORPUS.read_text().splitlines()][:60]


def _write(path, fmt):
    if fmt == "txt":
        path.write_text("\n".join(TEXTS) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    elif fmt == "jsonl-col":
        path.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in TEXTS))
    else:
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            w.writerow(["id", "review"])
            w.writerows([i, t] for i, t in enumerate(TEXTS))


@pytest.mark.parametrize("fmt, suffix, column", [
    ("txt", ".txt", None), ("jsonl", ".jsonl", None), ("jsonl-col", ".jsonl", "sentence"),
    ("csv", ".csv", "review"), ("tsv", ".tsv", "review"),
])
def test_quantize_from_each_format(tiny_export, tmp_path, fmt, suffix, column):
    data = tmp_path / f"data{suffix}"
    _write(data, fmt)
    out = tmp_path / "int8"
    args = ["quantize", tiny_export, "--calibration-data", data, *FAST, "--out", out]
    res = cli(*args, *(["--text-column", column] if column else []))
    assert res.exit_code == 0, res.output
    m = manifest(out)
    assert m["parent"]["sha256"] == manifest(tiny_export)["artifact_sha256"]
    d = m["results"]["data"]
    assert d["sha256"] == sha256_file(data) and d["usable"] == len(TEXTS)
    assert (d["calibration"], d["heldout"]) == (16, 16)
    f = m["results"]["fidelity"]
    assert f["samples"] == 16 and f["mean_cosine"] >= 0.99 and f["top1_agreement"] >= 0.9
    ort.InferenceSession(str(out / "model.onnx"))  # loads


def test_weights_are_int8_and_record_matches_model(tiny_int8, tiny_export):
    model = onnx.load(str(tiny_int8 / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    fp32_convs = sum(n.op_type == "Conv" for n in onnx.load(str(tiny_export / "model.onnx")).graph.node)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == fp32_convs == 12  # 2 layers x 6 grouped 1x1 convolutions
    for conv in convs:
        for inp in conv.input[:2]:  # activation and weight both come through DequantizeLinear
            dq = producers[inp]
            assert dq.op_type == "DequantizeLinear"
        w_dq = producers[conv.input[1]]
        assert inits[w_dq.input[0]].dtype == np.int8
    record = json.loads((tiny_int8 / "quant_params.json").read_text())["tensors"]
    assert len(record) == manifest(tiny_int8)["results"]["quantized_tensors"]
    for conv in convs:
        w_dq = producers[conv.input[1]]
        rec = record[w_dq.input[0]]
        assert rec["role"] == "weight" and rec["dtype"] == "int8" and rec["axis"] == 0
        np.testing.assert_array_equal(np.array(rec["scale"], np.float32), inits[w_dq.input[1]].reshape(-1))
    acts = [r for r in record.values() if r["role"] == "activation"]
    assert acts and all(r["dtype"] == "uint8" and len(r["scale"]) == 1 for r in acts)  # host preset: u8


def test_recorded_fidelity_is_reproducible(tiny_int8, tiny_export):
    """Recompute the held-out cosine independently from the two ONNX files and the recorded split."""
    m = manifest(tiny_int8)
    corpus = read_texts(DEFAULT_CORPUS)
    _, heldout = split(corpus.texts, 16, 16, 0, DEFAULT_CORPUS)
    tok, _ = load_tokenizer(None, TINY_SEQ)
    feeds = encode(tok, heldout, 30528)
    a = ort.InferenceSession(str(tiny_export / "model.onnx"))
    b = ort.InferenceSession(str(tiny_int8 / "model.onnx"))
    cos = []
    for i in range(len(heldout)):
        feed = {k: v[i:i + 1] for k, v in feeds.items()}
        x, y = a.run(None, feed)[0].ravel(), b.run(None, feed)[0].ravel()
        cos.append(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
    assert abs(np.mean(cos) - m["results"]["fidelity"]["mean_cosine"]) < 1e-5
    assert feeds["attention_mask"].sum(1).min() >= 3  # real tokenized text: [CLS] word(s) [SEP]


def _max_weight(path):
    """The largest |weight| of the layers' int8 weights (not the int8 embedding tables, always 8-bit)."""
    m = onnx.load(str(path / "model.onnx"))
    tables = set(manifest(path)["results"]["int8_tables"])
    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max())
               for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.name not in tables
               and t.dims)  # not the activations' zero points (scalars)


def test_avx2_preset_quantizes_weights_to_7_bits(tiny_export, tiny_int8, tmp_path):
    """x86-avx2 asks for 7-bit weights (onnxruntime's reduce_range): every weight in [-64, 64], which
    the AVX2 u8 x s8 kernel needs to be exact; the 8-bit default uses the full range."""
    out = tmp_path / "w7"
    res = cli("-q", "quantize", tiny_export, *FAST, "--target", "x86-avx2", "--out", out)
    assert res.exit_code == 0, res.output
    assert manifest(out)["results"]["scheme"]["weight_bits"] == 7
    assert _max_weight(out) == 64
    assert manifest(tiny_int8)["results"]["scheme"]["weight_bits"] == 8 and _max_weight(tiny_int8) == 127


def test_pi4_preset_has_7_bit_weights_and_zero_pointed_s8_activations(tiny_int8_rpi4):
    """The Pi 4 preset: weights in [-64, 64] (four s8 products fit an int16 lane) and s8 activations whose
    zero points are calibrated, not 0 (one-sided tensors such as softmax's keep their 8 bits)."""
    scheme = manifest(tiny_int8_rpi4)["results"]["scheme"]
    assert scheme["weight_bits"] == 7 and scheme["symmetric_activations"] is False and _max_weight(tiny_int8_rpi4) == 64
    record = json.loads((tiny_int8_rpi4 / "quant_params.json").read_text())["tensors"]
    activations = [r for r in record.values() if r["role"] == "activation"]
    assert all(r["dtype"] == "int8" for r in activations) and any(set(r["zero_point"]) != {0} for r in activations)


def test_signed_activations_are_symmetric(tiny_export, tmp_path):
    out = tmp_path / "s8"
    res = cli("-q", "quantize", tiny_export, *FAST, "--activations", "int8", "--per-tensor", "--out", out)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "quant_params.json").read_text())["tensors"]
    assert {r["role"] for r in record.values()} == {"activation", "weight", "bias"}
    assert all(set(r["zero_point"]) == {0} for r in record.values())
    assert all(r["dtype"] == "int8" for r in record.values() if r["role"] != "bias")
    assert all(r["dtype"] == "int32" for r in record.values() if r["role"] == "bias")  # scale s_x * s_w
    assert all(len(r["scale"]) == 1 for r in record.values())  # per-tensor weights
    assert manifest(out)["results"]["scheme"]["per_channel"] is False


def test_fidelity_below_threshold_fails_hard(tiny_export, tmp_path):
    """A gate no int8 model reaches (mean cosine exactly 1): exit 6, what it missed named, nothing written."""
    out = tmp_path / "int8"
    res = cli("quantize", tiny_export, *FAST, "--min-cosine", "1", "--out", out)
    assert res.exit_code == 6
    assert "int8 fidelity too low: mean cosine" in res.stderr and "< --min-cosine 1" in res.stderr
    assert not out.exists()


def test_each_gate_names_what_it_missed():
    from squeezeedge.errors import ValidationError
    from squeezeedge.stages.quantize import QuantizeConfig, _check

    cfg = QuantizeConfig(fallback=False)
    with pytest.raises(ValidationError, match=r"mean cosine 0.9800 < --min-cosine 0.99"):
        _check({"mean_cosine": 0.98, "top1_agreement": 1.0}, cfg)
    with pytest.raises(ValidationError, match=r"top-1 agreement 0.800 < --min-agreement 0.9"):
        _check({"mean_cosine": 0.995, "top1_agreement": 0.8}, cfg)
    _check({"mean_cosine": 0.995, "top1_agreement": 0.95}, cfg)  # both met: no error


@pytest.mark.parametrize("flag", ["--min-cosine", "--min-agreement"])
def test_a_gate_outside_0_to_1_is_a_bad_argument(tiny_export, tmp_path, flag):
    res = cli("quantize", tiny_export, *FAST, flag, "1.01", "--out", tmp_path / "q")
    assert res.exit_code == 3 and f"{flag} must be between 0 and 1 (inclusive), got 1.01" in res.stderr
    assert not (tmp_path / "q").exists()


def test_default_corpus_is_real_and_documented():
    lines = DEFAULT_CORPUS.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 1000 and all(line.strip() for line in lines)
    assert len(set(lines)) == len(lines)
    lengths = [len(line.split()) for line in lines]
    assert min(lengths) <= 2 and max(lengths) >= 30  # varied length
    assert (DEFAULT_CORPUS.parent / "PROVENANCE.md").is_file()


def _bad(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("name, content, extra, words", [
    ("empty.txt", b"", [], "is empty"),
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1") * 50, [], "is not UTF-8 (bad byte at offset 3)"),
    ("blob.txt", b"\x7fELF\x00\x01\x02" * 40, [], "is binary"),
    ("blank.txt", b"\n   \n\t\n" * 40, [], "no non-empty texts"),
    ("few.txt", b"one line\ntwo lines\nthree\n", [], "has 3 usable texts; --num-samples 16 plus 16 held out needs 32"),
    ("nocol.csv", b"id,body\n1,hello\n", ["--text-column", "review"], "has no column 'review' (columns: id, body)"),
    ("nofield.jsonl", b'{"body": "hello"}\n', [], "line 1 has no field 'text'"),
    ("data.parquet", b"PAR1", [], "unsupported type '.parquet'"),
])
def test_bad_calibration_data(tiny_export, tmp_path, name, content, extra, words):
    data = _bad(tmp_path, name, content)
    out = tmp_path / "out"
    res = cli("quantize", tiny_export, "--calibration-data", data, *FAST, *extra, "--out", out)
    assert res.exit_code == 8, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_calibration_file(tiny_export, tmp_path):
    res = cli("quantize", tiny_export, "--calibration-data", tmp_path / "nope.txt", "--out", tmp_path / "o")
    assert res.exit_code == 8 and "does not exist" in res.stderr


@pytest.mark.parametrize("make_dir, words", [
    (lambda p: p, "no manifest.json"),
    ("int8", "is a 'quantize' artifact, expected a 'export' artifact"),
])
def test_model_that_is_not_an_export_artifact(tiny_int8, tmp_path, make_dir, words):
    src = tiny_int8 if make_dir == "int8" else make_dir(tmp_path)
    res = cli("quantize", src, *FAST, "--out", tmp_path / "out")
    assert res.exit_code == 5 and words in res.stderr
    assert not (tmp_path / "out").exists()


def test_rerun_is_skipped(tiny_int8, tiny_export):
    res = cli("quantize", tiny_export, *FAST, "--out", tiny_int8)
    assert res.exit_code == 0 and "skipped" in res.stdout


def test_keep_float_gelu_out_leaves_exactly_the_ffn_outputs_float(tiny_export, tmp_path):
    out = tmp_path / "mixed"
    res = cli("-q", "quantize", tiny_export, *FAST, "--keep-float", "gelu-out", "--out", out)
    assert res.exit_code == 0, res.output
    model = onnx.load(str(out / "model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    float_convs = [n for n in model.graph.node if n.op_type == "Conv"
                   and producers.get(n.input[1], onnx.NodeProto()).op_type != "DequantizeLinear"]
    assert len(float_convs) == 2 == manifest(out)["results"]["float_layers"]  # one FFN output per layer
    for conv in float_convs:  # fed by the GELU (x * 0.5 * (1 + erf(x / sqrt 2)))
        seen, stack = set(), [conv.input[0]]
        while stack:
            node = producers.get(stack.pop())
            if node is not None and node.name not in seen and len(seen) < 6:
                seen.add(node.name)
                stack.extend(node.input)
        assert any(producers[o].op_type == "Erf" for o in producers if producers[o].name in seen)


def test_json_output_is_clean_for_histogram_methods(tiny_export, tmp_path):
    """onnxruntime's entropy/percentile calibrators print progress; --json stdout must stay pure JSON."""
    res = cli("-q", "--json", "quantize", tiny_export, *FAST, "--method", "entropy", "--out", tmp_path / "e")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["manifest"]["results"]["method"] == "entropy"


def test_float_outputs_leave_those_layers_outputs_unquantized(tiny_export, tmp_path):
    """Default: no compute layer's output is quantized (their multiply-adds still are); --float-outputs Gemm:
    Conv outputs quantized, Gemm's (pooler, classifier) not; a bad op type is one line, exit 3."""
    import onnx

    def output_quantized(model_dir, op_type):
        graph = onnx.load(str(model_dir / "model.onnx")).graph
        consumers = {i: n.op_type for n in graph.node for i in n.input}
        return [consumers.get(o) == "QuantizeLinear" for n in graph.node if n.op_type == op_type for o in n.output]

    gemm = tmp_path / "gemm"
    assert cli("-q", "quantize", tiny_export, *FAST, "--float-outputs", "Gemm", "--out", gemm).exit_code == 0
    assert not any(output_quantized(gemm, "Gemm")) and all(output_quantized(gemm, "Conv"))
    none = tmp_path / "none"
    res = cli("-q", "quantize", tiny_export, *FAST, "--out", none)
    assert res.exit_code == 0, res.output
    assert not any(any(output_quantized(none, op)) for op in ("Conv", "MatMul", "Gemm"))
    assert manifest(none)["results"]["scheme"]["float_outputs"] == ["Conv", "Gemm", "MatMul"]
    bad = cli("quantize", tiny_export, *FAST, "--float-outputs", "Relu", "--out", tmp_path / "bad")
    assert bad.exit_code == 3 and "unknown --float-outputs 'Relu'" in bad.stderr and "Traceback" not in bad.output


def test_bad_smooth_quant_strength_is_one_line(tiny_export, tmp_path):
    res = cli("quantize", tiny_export, *FAST, "--smooth-quant", "1.5", "--out", tmp_path / "a")
    assert res.exit_code == 3 and "--smooth-quant must be between 0 and 1" in res.stderr
    res = cli("quantize", tiny_export, *FAST, "--smooth-quant", "strong", "--out", tmp_path / "b")
    assert res.exit_code == 2 and "'strong' is not a number" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
