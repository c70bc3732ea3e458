"""Artifact directories: manifest.json, content hashes, atomic writes, skip-if-unchanged.

Every stage writes its output through :func:`run_stage`: the work happens in a temp directory beside the
destination, the manifest is written last, and only then is the directory renamed into place. A killed
run leaves at most a hidden ``.NAME.tmp-*`` directory, never a half artifact under the real name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from squeezeedge.errors import ArtifactError, OutputError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_TOOLS = ("squeezeedge", "torch", "onnx", "onnxruntime", "apache-tvm", "transformers", "numpy")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def package_versions(names) -> dict[str, str | None]:
    """Installed versions of ``names`` (None when missing), read from package metadata (no imports)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def tool_versions() -> dict[str, str | None]:
    """Python and the core tools' versions (part of every stage's cache key)."""
    return {"python": platform.python_version()} | package_versions(_TOOLS)


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (relative POSIX paths), manifest excluded."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(root).as_posix()] = sha256_file(p)
    return files


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)  # Linux reports KiB


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: its directory and parsed manifest."""

    path: Path
    manifest: dict

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def sha256(self) -> str:
        """Content identity: changes when any file changes, not when only timings do."""
        return self.manifest["artifact_sha256"]

    @property
    def results(self) -> dict:
        return self.manifest.get("results", {})

    def file(self, name: str) -> Path:
        return self.path / name


def load_artifact(path: Path, stage: str | None = None, verify: bool = True) -> Artifact:
    """Read and check an artifact directory.

    Raises ArtifactError if there is no manifest, it is unreadable, it comes from a newer schema, it is
    of another stage than ``stage``, or (with ``verify``) a file is missing or its sha256 differs.
    """
    path = Path(path).absolute()  # manifests record parents by this path: keep it valid from any cwd
    mpath = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory (expected a squeezeedge artifact)")
    if not mpath.is_file():
        raise ArtifactError(f"{path} is not a squeezeedge artifact: no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
        version = int(manifest["schema_version"])
        manifest["stage"], manifest["files"], manifest["artifact_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{mpath} is unreadable or incomplete: {exc}") from None
    if version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{mpath} has schema version {version}, newer than this squeezeedge reads ({SCHEMA_VERSION}); "
            "upgrade squeezeedge"
        )
    if stage is not None and manifest["stage"] != stage:
        raise ArtifactError(f"{path} is a '{manifest['stage']}' artifact, expected a '{stage}' artifact")
    if verify:
        for name, digest in manifest["files"].items():
            f = path / name
            if not f.is_file():
                raise ArtifactError(f"{path}: file {name} listed in the manifest is missing")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{path}: {name} does not match its sha256 in the manifest (modified?)")
    return Artifact(path, manifest)


def code_sha256() -> str:
    """Hash of squeezeedge's own source: a code change must invalidate cached stages (the version string
    does not change between development commits)."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _cache_key(stage: str, config: dict, parent_sha: str | None) -> str:
    return sha256_json({"schema": SCHEMA_VERSION, "stage": stage, "config": config, "parent": parent_sha,
                        "code": code_sha256(), "versions": tool_versions()})


def _reusable(out: Path, key: str) -> Artifact | None:
    try:
        art = load_artifact(out, verify=True)
    except ArtifactError:
        return None
    return art if art.manifest.get("cache_key") == key else None


@contextlib.contextmanager
def _lock(out: Path):
    lock_path = out.parent / f".{out.name}.lock"
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write to {out.parent}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another squeezeedge run is writing {out} (lock {lock_path}); wait for it") from None
        yield
    finally:
        os.close(fd)


def prepare_output(out: Path, marker: str = MANIFEST) -> Path:
    """Check that ``out`` can be created (or replaced) before any long work starts.

    A non-empty existing directory must be ours: it holds a manifest, or ``marker`` (the state file of
    a resumable stage that has not finished yet).
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file() and not (out / marker).is_file():
        raise OutputError(f"{out} exists, is not empty and is not a squeezeedge artifact; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out.parent}: {exc.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"cannot write to {out.parent}: permission denied")
    return out


@dataclass(frozen=True)
class StageRun:
    artifact: Artifact
    skipped: bool


def run_stage(
    stage: str,
    out: Path,
    config: dict,
    work: Callable[[Path], dict],
    parent: Artifact | None = None,
    force: bool = False,
) -> StageRun:
    """Run ``work(tmpdir) -> results`` into ``out`` atomically, or skip if ``out`` already holds it.

    ``config`` must cover every input that changes the output (it is the cache key, with the parent's
    content hash and the schema version). ``results`` (measured numbers) go into the manifest.
    """
    out = prepare_output(out)
    parent_sha = parent.sha256 if parent else None
    key = _cache_key(stage, config, parent_sha)
    with _lock(out):
        _recover(out)
        if not force and (art := _reusable(out, key)) is not None:
            return StageRun(art, skipped=True)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        except OSError as exc:
            raise OutputError(f"cannot write to {out.parent}: {exc.strerror}") from None
        try:
            t0 = time.perf_counter()
            results = work(tmp)
            files = hash_tree(tmp)
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "stage": stage,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cache_key": key,
                "parent": {"path": str(parent.path), "stage": parent.stage, "sha256": parent_sha} if parent else None,
                "config": config,
                "results": results,
                "versions": tool_versions(),
                "wall_time_s": round(time.perf_counter() - t0, 3),
                "peak_rss_mb": peak_rss_mb(),
                "files": files,
                "artifact_sha256": sha256_json(files),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return StageRun(Artifact(out, manifest), skipped=False)


def _recover(out: Path) -> None:
    """Clean up after a run that was killed (SIGKILL, power loss) while writing ``out``; call under its lock.

    A kill mid-work leaves ``.NAME.tmp-*`` (removed here). A kill between the two renames of
    _replace_dir leaves the previous artifact in ``.NAME.old-*/a`` and no ``out``: it is put back.
    """
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not out.exists() and (old / "a" / MANIFEST).is_file():
            os.rename(old / "a", out)
        shutil.rmtree(old, ignore_errors=True)


def _replace_dir(new: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "a")
    os.rename(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all (a hidden temp file beside it, renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
