"""The bad-input catalogue in one table: each case ends in one line naming the problem, its error
class's exit code, no traceback, and no output directory. (Runtime input checks, library tampering,
target files, trackers and bench results have their own tests beside the stage they belong to.)"""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import FAST_Q, cli


def _export_copy(tiny_export, tmp_path, damage):
    src = tmp_path / "exp"
    shutil.copytree(tiny_export, src)
    onnx_file = src / "model.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes({"empty": b"", "truncated": data[: len(data) // 3],
                           "corrupt": data[:100] + b"\xff" * 512 + data[612:]}[damage])
    return src


def _future_manifest(tiny_export, tmp_path):
    src = tmp_path / "exp"
    shutil.copytree(tiny_export, src)
    m = json.loads((src / "manifest.json").read_text())
    m["schema_version"] = 99
    (src / "manifest.json").write_text(json.dumps(m))
    return src


def _not_bert_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    return ck


def _calib(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def _huge(tmp_path):
    from squeezeedge.stages.calibdata import MAX_BYTES

    p = tmp_path / "huge.txt"
    with open(p, "wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: the size is refused before a byte is read
    return p


CASES = {
    # ONNX damaged inside an export artifact: caught by the manifest's sha256 before any parser sees it
    "empty onnx": (lambda e, t: ["build", _export_copy(e, t, "empty")], 5, "model.onnx does not match its sha256"),
    "truncated onnx": (lambda e, t: ["build", _export_copy(e, t, "truncated")], 5, "does not match its sha256"),
    "corrupt onnx": (lambda e, t: ["quantize", _export_copy(e, t, "corrupt"), *FAST_Q], 5, "does not match"),
    "future manifest": (lambda e, t: ["build", _future_manifest(e, t)], 5, "schema version 99"),
    "not an artifact": (lambda e, t: ["build", t], 5, "not a squeezeedge artifact"),
    "not SqueezeBERT-shaped": (lambda e, t: ["export", "--checkpoint", _not_bert_checkpoint(t)], 3, "gpt2"),
    "empty calibration": (lambda e, t: ["quantize", e, "--calibration-data", _calib(t, "c.txt", b"")], 8, "is empty"),
    "binary calibration": (lambda e, t: ["quantize", e, "--calibration-data", _calib(t, "c.txt", b"ab\x00cd")], 8,
                           "is binary"),
    "huge calibration": (lambda e, t: ["quantize", e, "--calibration-data", _huge(t)], 8, "MiB limit"),
    "unknown target": (lambda e, t: ["build", e, "--target", "rpi9"], 4, "rpi9"),
    "malformed target": (lambda e, t: ["build", e, "--target-file", _calib(t, "b.toml", b"name = [")], 4,
                         "malformed TOML"),
    "zero trials": (lambda e, t: ["tune", e, "--trials", "0"], 3, "--trials"),
    "unreachable tracker": (lambda e, t: ["tune", e, "--tracker", "127.0.0.1:9", "--key", "k"], 3,
                            "cannot reach the RPC tracker"),
    "bench of a non-library": (lambda e, t: ["bench", e, "--baselines", "none", "--out", t / "o.json"], 5,
                               "'export' artifact, expected a 'build'"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_catalogue(case, tiny_export, tmp_path):
    make, code, words = CASES[case]
    args = [str(a) for a in make(tiny_export, tmp_path)]
    out = tmp_path / "out"
    res = cli(*args, *(["--out", out] if "--out" not in args else []))
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == code, (case, res.output)
    assert len(lines) == 1 and lines[0].startswith("squeezeedge: ") and words in lines[0], lines
    assert "Traceback" not in res.output and not out.exists()
