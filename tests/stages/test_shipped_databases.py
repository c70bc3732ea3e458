"""The tuning databases shipped in results/databases/ are accepted by what today's export and quantize
produce from the any-length export (the model they were tuned for, every length bucket), so `make demo` and `make bench-latency` build with them on any
machine of this kind (issue 19: a stale database stopped bench-latency with exit 3). Full-size export
(~12 s) and quantize (~45 s a preset): this is the only check that the shipped files still fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import cli

DATABASES = sorted(p for p in (Path(__file__).parents[2] / "results" / "databases").glob("*/manifest.json"))


@pytest.fixture(scope="module")
def full_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "export"
    res = cli("-q", "export", "--model", "squeezebert-uncased", "--dynamic", "--out", out)  # as make pretune
    assert res.exit_code == 0, res.output
    return out


def _sha(artifact: Path) -> str:
    return json.loads((artifact / "manifest.json").read_text())["artifact_sha256"]


def test_there_are_shipped_databases_for_both_x86_reference_targets():
    names = {p.parent.name for p in DATABASES}
    assert {"x86-avx512-int8", "x86-avx512-fp32", "x86-avx2-int8", "x86-avx2-fp32"} <= names


@pytest.mark.parametrize("manifest", DATABASES, ids=lambda p: p.parent.name)
def test_shipped_database_fits_todays_model(manifest, full_export, tmp_path):
    ident = json.loads(manifest.read_text())["config"]["identity"]
    model = full_export
    if ident["model_stage"] == "quantize":
        model = tmp_path / "int8"
        res = cli("-q", "quantize", full_export, "--target", ident["target"], "--out", model)
        assert res.exit_code == 0, res.output
    assert ident["model_sha256"] == _sha(model), (
        f"{manifest.parent.name} was tuned for model {ident['model_sha256'][:12]}, today's {ident['model_stage']} "
        f"is {_sha(model)[:12]}: re-make it with make pretune REF_TARGET={ident['target']}")
