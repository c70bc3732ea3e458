"""The CLI contract: every command exists, explains itself, and unbuilt stages say so and fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from squeezeedge.errors import exit_code_table

from .conftest import cli

COMMANDS = ["export", "quantize", "tune", "build", "bench", "report", "fleet", "targets", "inspect", "pipeline", "profile"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_manual(name):
    res = cli(name, "--help")
    assert res.exit_code == 0
    assert "Usage: main" in res.stdout or "Usage:" in res.stdout
    assert len(res.stdout.splitlines()) >= 5


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "squeezeedge", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "squeezeedge" in proc.stdout


def test_readme_error_table_matches_code():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert exit_code_table() in readme


def test_inspect_of_a_non_artifact(tmp_path):
    res = cli("inspect", tmp_path)
    assert res.exit_code == 5 and "no manifest.json" in res.stderr


def test_inspect_of_future_schema(tmp_path):
    (tmp_path / "manifest.json").write_text(
        '{"schema_version": 99, "stage": "export", "files": {}, "artifact_sha256": "x"}')
    res = cli("inspect", tmp_path)
    assert res.exit_code == 5 and "schema version 99" in res.stderr
