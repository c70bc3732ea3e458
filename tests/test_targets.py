"""Target files: every shipped board parses, TVM accepts it, and bad files fail naming file and key."""

from __future__ import annotations

import json

import pytest

from squeezeedge.targets import TARGETS_DIR, known_targets, load_target, load_target_file

from .conftest import cli

SHIPPED = ["host", "jetson-orin-nano", "jetson-xavier-nx", "rpi4", "rpi5", "x86-avx2", "x86-avx512"]


def test_shipped_targets_are_all_there():
    assert known_targets() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_tvm_accepts_every_shipped_target(name):
    t = load_target(name)
    resolved = t.tvm_target_json()
    assert resolved["kind"] == t.tvm["kind"]
    assert t.int8.reason and t.tuning.trials > 0
    if t.device == "cuda":
        assert resolved["host"]["mtriple"] == "aarch64-linux-gnu"
        assert resolved["arch"] == t.tvm["arch"]


@pytest.mark.parametrize("name, mcpu, dotprod", [("rpi4", "cortex-a72", False), ("rpi5", "cortex-a76", True)])
def test_pi_targets_resolve_to_their_cores(name, mcpu, dotprod):
    res = cli("--json", "targets", "show", name)
    assert res.exit_code == 0, res.output
    tvm_target = json.loads(res.stdout)["tvm_target"]
    assert tvm_target["mcpu"] == mcpu and tvm_target["mtriple"] == "aarch64-linux-gnu"
    assert tvm_target["feature.has_dotprod"] is dotprod
    assert json.loads(res.stdout)["qemu_cpu"] == mcpu  # its instructions are counted on its own core


def test_host_cpu_is_detected():
    mcpu = load_target("host").tvm_target_json()["mcpu"]
    assert mcpu not in ("detect", "generic", "")


def test_show_prints_back_the_file_text():
    res = cli("targets", "show", "rpi4")
    assert (TARGETS_DIR / "rpi4.toml").read_text().rstrip() in res.stdout
    assert "accepted by TVM" in res.stdout


def test_list_names_every_target():
    res = cli("targets")
    assert res.exit_code == 0
    assert [line.split()[0] for line in res.stdout.strip().splitlines()] == SHIPPED


def test_user_target_file(tmp_path):
    text = (TARGETS_DIR / "rpi5.toml").read_text().replace('name = "rpi5"', 'name = "my-board"')
    f = tmp_path / "board.toml"
    f.write_text(text)
    res = cli("--json", "targets", "show", "--target-file", f)
    assert res.exit_code == 0 and json.loads(res.stdout)["name"] == "my-board"


def test_users_targets_directory_adds_and_overrides_boards(tmp_path, monkeypatch):
    """$SQUEEZEEDGE_TARGETS_DIR (what --targets-dir sets): its boards are listed with the shipped ones and
    win over a shipped board of the same name; a directory that does not exist is a one-line error."""
    from squeezeedge.resources import TARGETS_ENV

    (tmp_path / "my-board.toml").write_text((TARGETS_DIR / "rpi5.toml").read_text().replace('name = "rpi5"',
                                                                                           'name = "my-board"'))
    (tmp_path / "rpi4.toml").write_text((TARGETS_DIR / "rpi4.toml").read_text().replace("threads = 4", "threads = 3"))
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path))
    assert known_targets() == sorted([*SHIPPED, "my-board"])
    assert load_target("rpi4").threads == 3 and load_target("my-board").name == "my-board"
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path / "missing"))
    res = cli("targets")
    assert res.exit_code == 4 and "targets directory" in res.stderr and "missing" in res.stderr


def _bad(tmp_path, old, new):
    f = tmp_path / "bad.toml"
    f.write_text((TARGETS_DIR / "rpi4.toml").read_text().replace(old, new))
    return f


@pytest.mark.parametrize("old, new, words", [
    ('threads = 4', 'threads = 4\nturbo = true', "unknown key 'turbo' in the top level"),
    ('per_channel = true', 'per_channel = true\nbits = 4', "unknown key 'bits' in [int8]"),
    ('threads = 4', 'threads = "four"', "key 'threads' must be int"),
    ('activations = "int8"', 'activations = "int4"', "key 'int8.activations' must be 'uint8' or 'int8'"),
    ('name = "rpi4"', 'name = "rpi4', "malformed TOML"),
    ('rpc_key = "rpi4"\n', '', "missing key 'rpc_key'"),
    ('weight_bits = 7', 'weight_bits = 4', "key 'int8.weight_bits' must be 7 or 8"),
    ('symmetric_activations = false', 'symmetric_activations = "no"', "key 'int8.symmetric_activations' must be bool"),
    ('qemu_cpu = "cortex-a72"', 'qemu_cpu = "cortex-a78"', "key 'qemu_cpu' must be one of qemu-aarch64's cores"),
])
def test_bad_target_files_name_file_and_key(tmp_path, old, new, words):
    f = _bad(tmp_path, old, new)
    res = cli("targets", "show", "--target-file", f)
    assert res.exit_code == 4
    assert words in res.stderr and str(f) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_target_tvm_rejects(tmp_path):
    f = _bad(tmp_path, 'mcpu = "cortex-a72"', 'mcpu = "cortex-z99"')
    res = cli("targets", "show", "--target-file", f)
    assert res.exit_code == 4 and "TVM rejects this target" in res.stderr and "cortex-z99" in res.stderr


def test_unknown_target_name():
    res = cli("targets", "show", "rpi9")
    assert res.exit_code == 4 and "unknown target 'rpi9'" in res.stderr and "rpi4" in res.stderr


def test_weight_bits_defaults_to_8_and_avx2_asks_for_7():
    assert load_target("rpi5").int8.weight_bits == 8  # not in the file: the full int8 range
    assert load_target("x86-avx2").int8.weight_bits == 7  # vpmaddubsw cannot saturate
    assert load_target("rpi4").int8.weight_bits == 7  # four s8 products fit an int16 lane


def test_target_dataclass_is_frozen():
    t = load_target_file(TARGETS_DIR / "rpi4.toml")
    with pytest.raises(Exception):
        t.threads = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.tvm["mcpu"] = "x"  # type: ignore[index]
