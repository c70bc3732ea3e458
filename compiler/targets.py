"""Boards as data: one TOML file per target in targets/, loaded into a frozen dataclass.

Our own keys are checked strictly (unknown keys are an error naming the file and key); the ``[tvm]`` and
``[tvm_host]`` tables are TVM target dicts and are checked by TVM itself in :meth:`Target.tvm_target`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from squeezeedge.errors import TargetError
from squeezeedge.resources import TARGETS_ENV, data_dir, user_targets_dir

TARGETS_DIR = data_dir("targets")  # the shipped boards
QEMU_CPUS = ("cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1", "a64fx")
DETECT = "detect"  # mcpu = "detect" asks LLVM for this machine's CPU (TVM's own "native" falls back to generic)


@dataclass(frozen=True)
class Int8Preset:
    activations: str  # "uint8" | "int8"
    weights: str  # "int8"
    per_channel: bool
    reason: str
    # 7: weights in [-64, 64] (onnxruntime's reduce_range), so that a u8 x s8 pair sum fits int16 and
    # AVX2's vpmaddubsw is exact (255 * 64 * 2 = 32640), and four s8 x s8 products fit one int16 lane on
    # the A72 (smull, smlal2, smlal, smlal2: int8.fits_four_products); 8: the full int8 range.
    weight_bits: int = 8
    # int8 activations with a zero point of 0 (True, onnxruntime's ActivationSymmetric) or one calibrated
    # per tensor (False: one-sided tensors, softmax's and GELU's outputs, keep their whole 8 bits; the
    # kernels subtract it as they do u8's). uint8 activations always have one.
    symmetric_activations: bool = True


@dataclass(frozen=True)
class Tuning:
    trials: int  # total MetaSchedule trials for a full model
    per_iteration: int  # candidates measured per batch (small batches starve the scheduler)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    device: str  # "cpu" | "cuda"
    threads: int  # 0 = all cores of the machine it runs on
    rpc_key: str
    cross_triple: str  # "" = native, else the GNU triple of the cross toolchain that links the library
    tvm: Mapping[str, Any]
    tvm_host: Mapping[str, Any] | None
    int8: Int8Preset
    tuning: Tuning
    source: Path
    text: str
    # The core qemu-user emulates to count this board's instructions (qemu 7.2's names; "": not counted)
    qemu_cpu: str = ""

    def to_dict(self) -> dict:
        """Plain JSON-able form (what --json and build metadata record)."""
        return {
            "name": self.name, "description": self.description, "device": self.device, "threads": self.threads,
            "rpc_key": self.rpc_key, "cross_triple": self.cross_triple, "tvm": dict(self.tvm),
            "tvm_host": dict(self.tvm_host) if self.tvm_host is not None else None,
            "int8": vars(self.int8).copy(), "tuning": vars(self.tuning).copy(), "source": str(self.source),
            "qemu_cpu": self.qemu_cpu,
        }

    @property
    def is_cross(self) -> bool:
        return bool(self.cross_triple)

    def resolved_dict(self, table: Mapping[str, Any]) -> dict:
        d = dict(table)
        if d.get("mcpu") == DETECT:
            import tvm

            d["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
        if d.get("kind") == "llvm" and "num-cores" not in d:  # MetaSchedule requires it
            import os

            d["num-cores"] = self.threads or os.cpu_count() or 1
        return d

    def tvm_target(self):
        """The tvm.target.Target, host included; raises TargetError if TVM or LLVM rejects it."""
        import tvm

        try:
            tgt = self.resolved_dict(self.tvm)
            host = self.resolved_dict(self.tvm_host) if self.tvm_host is not None else None
            for d in (tgt, host):
                if d and d.get("kind") == "llvm" and "mcpu" in d:
                    triple = d.get("mtriple") or str(tvm.target.codegen.llvm_get_system_triple())
                    if not tvm.target.codegen.llvm_is_valid_cpu(d["mcpu"], triple):
                        raise ValueError(f"LLVM does not know mcpu '{d['mcpu']}' for {triple}")
            return tvm.target.Target(tgt, host=host) if host else tvm.target.Target(tgt)
        except Exception as exc:  # TVM raises ValueError/TVMError with multi-line text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TargetError(f"{self.source}: TVM rejects this target: {first}") from None

    def tvm_target_json(self) -> dict:
        return json.loads(str(self.tvm_target()))


def _check_keys(table: Mapping[str, Any], cls, where: str, source: Path, extra: tuple[str, ...] = ()) -> None:
    allowed = {f.name for f in fields(cls)} - {"source", "text"} | set(extra)
    for key in table:
        if key not in allowed:
            raise TargetError(f"{source}: unknown key '{key}' in {where} (allowed: {', '.join(sorted(allowed))})")
    optional = {f.name for f in fields(cls) if f.default is not MISSING}
    missing = allowed - set(table) - {"tvm_host"} - set(extra) - optional
    if missing:
        raise TargetError(f"{source}: missing key '{sorted(missing)[0]}' in {where}")


def _typed(value: Any, typ: type, key: str, source: Path) -> Any:
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise TargetError(f"{source}: key '{key}' must be {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_target(text: str, source: Path) -> Target:
    """Parse a target file's text. Raises TargetError naming the file and the key at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{source}: malformed TOML: {exc}") from None
    _check_keys(data, Target, "the top level", source)
    int8 = data["int8"]
    tuning = data["tuning"]
    for key, table in (("tvm", data["tvm"]), ("int8", int8), ("tuning", tuning)):
        if not isinstance(table, dict):
            raise TargetError(f"{source}: '{key}' must be a table")
    _check_keys(int8, Int8Preset, "[int8]", source)
    _check_keys(tuning, Tuning, "[tuning]", source)
    for key in ("name", "description", "device", "rpc_key", "cross_triple"):
        _typed(data[key], str, key, source)
    if _typed(data.get("qemu_cpu", ""), str, "qemu_cpu", source) not in ("", *QEMU_CPUS):
        raise TargetError(f"{source}: key 'qemu_cpu' must be one of qemu-aarch64's cores ({', '.join(QEMU_CPUS)}), "
                          f"got {data['qemu_cpu']!r}")
    if data["device"] not in ("cpu", "cuda"):
        raise TargetError(f"{source}: key 'device' must be 'cpu' or 'cuda', got {data['device']!r}")
    if _typed(data["threads"], int, "threads", source) < 0:
        raise TargetError(f"{source}: key 'threads' must be >= 0")
    for key in ("activations", "weights"):
        if int8[key] not in ("uint8", "int8"):
            raise TargetError(f"{source}: key 'int8.{key}' must be 'uint8' or 'int8', got {int8[key]!r}")
    _typed(int8["per_channel"], bool, "int8.per_channel", source)
    _typed(int8["reason"], str, "int8.reason", source)
    if _typed(int8.get("weight_bits", 8), int, "int8.weight_bits", source) not in (7, 8):
        raise TargetError(f"{source}: key 'int8.weight_bits' must be 7 or 8, got {int8['weight_bits']}")
    _typed(int8.get("symmetric_activations", True), bool, "int8.symmetric_activations", source)
    for key in ("trials", "per_iteration"):
        if _typed(tuning[key], int, f"tuning.{key}", source) <= 0:
            raise TargetError(f"{source}: key 'tuning.{key}' must be > 0")
    host = data.get("tvm_host")
    if host is not None and not isinstance(host, dict):
        raise TargetError(f"{source}: 'tvm_host' must be a table")
    for key, table in (("tvm", data["tvm"]), ("tvm_host", host)):
        if table is not None and "kind" not in table:
            raise TargetError(f"{source}: missing key 'kind' in [{key}]")
    if data["device"] == "cuda" and host is None:
        raise TargetError(f"{source}: a cuda target needs a [tvm_host] table (the board's CPU)")
    return Target(
        name=data["name"],
        description=data["description"],
        device=data["device"],
        threads=data["threads"],
        rpc_key=data["rpc_key"],
        cross_triple=data["cross_triple"],
        tvm=MappingProxyType(dict(data["tvm"])),
        tvm_host=MappingProxyType(dict(host)) if host is not None else None,
        int8=Int8Preset(**int8),
        tuning=Tuning(**tuning),
        source=source,
        text=text,
        qemu_cpu=data.get("qemu_cpu", ""),
    )


def load_target_file(path: Path) -> Target:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetError(f"target file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"cannot read target file {path}: {exc}") from None
    return parse_target(text, path)


def targets_dirs() -> list[Path]:
    """Where boards are looked up by name: the user's own directory first (--targets-dir or
    $SQUEEZEEDGE_TARGETS_DIR; its boards override shipped ones of the same name), then the shipped ones."""
    user = user_targets_dir()
    if user is not None and not user.is_dir():
        raise TargetError(f"targets directory {user} does not exist (--targets-dir / ${TARGETS_ENV})")
    return ([user] if user is not None else []) + [TARGETS_DIR]


def known_targets() -> list[str]:
    return sorted({p.stem for d in targets_dirs() for p in d.glob("*.toml")})


def load_target(name: str | None = None, target_file: Path | None = None) -> Target:
    """A board by name (the user's targets directory, then the shipped ones), or a user's board from
    ``target_file`` (which wins if both are given)."""
    if target_file is not None:
        return load_target_file(target_file)
    if name is None:
        raise TargetError("no target given (use --target NAME or --target-file PATH)")
    path = next((d / f"{name}.toml" for d in targets_dirs() if (d / f"{name}.toml").is_file()), None)
    if path is None:
        raise TargetError(f"unknown target '{name}' (known: {', '.join(known_targets())}; or --target-file PATH)")
    target = load_target_file(path)
    if target.name != name:
        raise TargetError(f"{path}: name '{target.name}' does not match the file name '{name}'")
    return target
