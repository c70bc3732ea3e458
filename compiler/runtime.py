"""Load a built library and call it like a function: ``squeezeedge.runtime.load(DIR)(input_ids=...)``, or
with text: ``load(DIR)("a sentence")`` answers with the model's head output (logits, or the sentence
embedding), tokenized by the tokenizer the library carries.

This module needs only numpy, TVM's runtime (apache-tvm, apache-tvm-ffi) and, for text, tokenizers: what
a board installs (BOARD_PACKAGES). It never imports torch, onnx, onnxruntime or transformers.

The library is loaded only after its sha256 matches metadata.json and its ELF machine matches this
host; inputs are checked by name, shape, dtype and range (TVM's embedding gather does not bounds-check:
an out-of-vocabulary id would read out of bounds instead of failing).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from squeezeedge.artifact import sha256_file
from squeezeedge.errors import ArtifactError, InputError

ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}
# What a board installs to run a library from Python (at this machine's versions: board_requirements)
BOARD_PACKAGES = ("numpy", "apache-tvm", "apache-tvm-ffi", "tokenizers")
# TVM's pool, by default: half the logical CPUs on x86 (it assumes SMT: one thread on a 2-core machine)
# and workers that spin 300000 times waiting for the next kernel. A library in a plain process runs
# fastest with the target's threads and a spin count of 1000 (sched_yield calls, well under a
# millisecond: awake across one inference's ~170 kernel launches, asleep soon after it;
# results/PERFORMANCE-LOG.md). So every way a library runs (this module,
# the C++ runner and run.sh, bench over RPC) sets these unless the user has.
SPIN_COUNT = 1000


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or taskset's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(target_threads: int | None) -> int:
    """The threads a library runs with by default: its target's (0 or None: all), at most the CPUs this
    process may use."""
    cpus = usable_cpus()
    return min(target_threads, cpus) if target_threads else cpus


def configure_threads(target_threads: int | None, threads: int | None = None) -> dict:
    """Set TVM's thread pool for this process before its first parallel kernel: ``threads`` if given, else
    TVM_NUM_THREADS if the user set it, else :func:`default_threads`; the spin count likewise
    (TVM_THREAD_POOL_SPIN_COUNT, else :data:`SPIN_COUNT`). TVM reads both when its pool starts, so the
    first library a process runs decides. Returns what is in force."""
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        os.environ["TVM_NUM_THREADS"] = str(threads)
        source = "argument"
    elif _positive(os.environ.get("TVM_NUM_THREADS")):  # as the C++ runner reads it
        source = "TVM_NUM_THREADS"
    else:
        os.environ["TVM_NUM_THREADS"] = str(default_threads(target_threads))
        source = "target (capped at the usable CPUs)"
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(SPIN_COUNT))
    spin = os.environ["TVM_THREAD_POOL_SPIN_COUNT"].strip()
    return {"threads": int(os.environ["TVM_NUM_THREADS"]), "threads_from": source,
            "spin_count": int(spin) if spin.isdigit() else 0}  # TVM's atoi reads anything else as 0


def _positive(value: str | None) -> bool:
    return bool(value) and value.strip().isdigit() and int(value) > 0
ISA_PREFIXES = ("avx", "sse", "fma", "bmi", "f16c", "amx", "neon", "dotprod", "i8mm", "sve")


def isa_features(tvm_target) -> set[str]:
    """Instruction-set extensions an LLVM target compiles for (tuning flags left out)."""
    import tvm

    return {f for f in tvm.target.codegen.llvm_get_cpu_features(tvm_target) if f.startswith(ISA_PREFIXES)}


def missing_cpu_features(required: list[str]) -> list[str]:
    """Which of a library's required ISA extensions this machine's CPU lacks."""
    import tvm

    host = tvm.target.Target({"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())})
    return sorted(set(required) - isa_features(host))


def elf_machine(path: Path) -> str:
    """The ELF machine of a shared library, after checking that every segment and the section table lie
    inside the file: dlopen of a truncated library dies with SIGBUS instead of failing."""
    data = Path(path).read_bytes()
    corrupt = ArtifactError(f"{path} is not a complete ELF shared library (truncated or corrupt)")
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:  # ELF64 only
        raise corrupt
    u = lambda off, n: int.from_bytes(data[off:off + n], "little")  # noqa: E731
    phoff, shoff, phentsize, phnum, shentsize, shnum = u(32, 8), u(40, 8), u(54, 2), u(56, 2), u(58, 2), u(60, 2)
    if phoff + phnum * phentsize > len(data) or shoff + shnum * shentsize > len(data):
        raise corrupt
    for i in range(phnum):
        ph = phoff + i * phentsize
        if u(ph + 8, 8) + u(ph + 32, 8) > len(data):  # p_offset + p_filesz
            raise corrupt
    code = u(18, 2)
    return ELF_MACHINES.get(code, f"ELF machine {code}")


class LoadedModel:
    """A compiled model: ``model(**inputs) -> list of numpy arrays`` in the metadata's output order."""

    def __init__(self, vm, inputs: list[dict], outputs: list[dict], vocab_size: int | None = None,
                 type_vocab_size: int | None = None, pool: dict | None = None, lengths: list[int] | None = None,
                 truncate: bool = False, device=None, tokenizer: Path | None = None):
        self._vm, self.inputs, self.outputs, self._device = vm, inputs, outputs, device
        self._tokenizer_file, self._tokenizer = tokenizer, None
        self.vocab_size, self.type_vocab_size = vocab_size, type_vocab_size
        self.pool = pool  # the thread pool settings in force (configure_threads)
        # an any-length library's buckets (squeezeedge.lowering.lengths); None: only the inputs' exact shape
        self.lengths, self.truncate = lengths, truncate

    @property
    def max_length(self) -> int:
        return self.inputs[0]["shape"][1]

    @classmethod
    def from_files(cls, lib: Path, inputs: list[dict], outputs: list[dict], cuda: bool = False,
                   **limits) -> "LoadedModel":
        """``cuda``: a CUDA library (metadata target device "cuda"), run on GPU 0 with the CPU as host."""
        import tvm
        from tvm import relax

        arch = elf_machine(lib)
        if arch != platform.machine():
            raise ArtifactError(f"{lib} is built for {arch}; this machine is {platform.machine()} "
                                "(run it on the board, under qemu, or through --tracker)")
        try:
            module = tvm.runtime.load_module(str(lib))
            vm = relax.VirtualMachine(module, [tvm.cuda(), tvm.cpu()] if cuda else tvm.cpu())
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise ArtifactError(f"cannot load {'CUDA ' if cuda else ''}library {lib}: {first[:200]}"
                                + (" (it needs a GPU and TVM's CUDA runtime; its CPU library is beside it)"
                                   if cuda else "")) from None
        return cls(vm, inputs, outputs, device=tvm.cuda() if cuda else None, **limits)

    def _check(self, feeds: dict):
        import numpy as np

        names = [i["name"] for i in self.inputs]
        unknown = sorted(set(feeds) - set(names))
        missing = [n for n in names if n not in feeds]
        if unknown:
            raise InputError(f"unknown input '{unknown[0]}' (the model takes {', '.join(names)})")
        if missing:
            raise InputError(f"missing input '{missing[0]}' (the model takes {', '.join(names)})")
        arrays = []
        for spec in self.inputs:
            arr = np.asarray(feeds[spec["name"]])
            if self.lengths and arr.ndim == 2 and arr.shape[0] == spec["shape"][0] and arr.shape[1] >= 1:
                if arr.shape[1] > self.max_length:
                    if not self.truncate:
                        raise InputError(f"input '{spec['name']}' has {arr.shape[1]} tokens; this library takes at "
                                         f"most {self.max_length} (truncation only when asked: truncate=True)")
                    arr = arr[:, :self.max_length]
            elif list(arr.shape) != list(spec["shape"]):
                what = (f"[{spec['shape'][0]}, 1..{self.max_length}]" if self.lengths else
                        f"{spec['shape']} (export with --dynamic for a library that takes any length)")
                raise InputError(f"input '{spec['name']}' has shape {list(arr.shape)}, the library was built "
                                 f"for {what}")
            if arr.dtype.kind not in "iu":
                raise InputError(f"input '{spec['name']}' has dtype {arr.dtype}, expected integers ({spec['dtype']})")
            limit = {"input_ids": self.vocab_size, "token_type_ids": self.type_vocab_size,
                     "attention_mask": 2}.get(spec["name"])
            if limit is not None and arr.size and (arr.min() < 0 or arr.max() >= limit):
                raise InputError(f"input '{spec['name']}' has values outside 0..{limit - 1}")
            arrays.append(np.ascontiguousarray(arr, dtype=spec["dtype"]))
        if len({a.shape for a in arrays}) > 1:
            raise InputError("the inputs differ in shape: " + ", ".join(
                f"{s['name']} {list(a.shape)}" for s, a in zip(self.inputs, arrays)))
        return arrays

    def dispatch(self, arrays: list) -> tuple[str, list]:
        """(Relax function, inputs padded to its length) for checked inputs."""
        from squeezeedge.lowering.lengths import bucket_for, function_name, pad

        if not self.lengths:
            return "main", arrays
        bucket = bucket_for(arrays[0].shape[1], self.lengths)
        return function_name(bucket, self.lengths), pad(arrays, bucket)

    def __call__(self, text=None, /, **feeds):
        """``model(input_ids=..., ...)``: the outputs, a list of arrays. ``model("text")``: the first
        output for that text (a 1-D array); ``model(["text", ...])``: one per text, each at its own length."""
        if text is not None:
            if feeds:
                raise InputError("pass text or token arrays, not both")
            if isinstance(text, str):
                return self._answer(text)
            if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
                return [self._answer(t) for t in text]
            raise InputError(f"text must be a string or a list of strings, not {type(text).__name__}")
        return self._run(feeds)

    def tokenize(self, text: str) -> dict:
        """Token ids, mask and types [1, L] for one text: L its own length on an any-length library,
        padded to the library's length on a fixed one; past the maximum refused, or cut when ``truncate``."""
        import numpy as np

        if self._tokenizer is None:
            if self._tokenizer_file is None:
                raise InputError("this library carries no tokenizer.json (rebuild it with squeezeedge build): "
                                 "pass input_ids=... instead of text")
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise InputError("answering text needs the tokenizers package: pip install tokenizers") from None
            self._tokenizer = Tokenizer.from_file(str(self._tokenizer_file))
        enc = self._tokenizer.encode(text)
        n = len(enc.ids)
        if n > self.max_length:
            if not self.truncate:
                raise InputError(f"the text has {n} tokens; this library takes at most {self.max_length} "
                                 "(truncation only when asked: load(..., truncate=True))")
            self._tokenizer.enable_truncation(self.max_length)  # [CLS] ... [SEP] within the maximum
            try:
                enc = self._tokenizer.encode(text)
            finally:
                self._tokenizer.no_truncation()
            n = len(enc.ids)
        width = n if self.lengths else self.max_length
        feeds = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        out = {}
        for spec in self.inputs:
            row = np.zeros((1, width), dtype=spec["dtype"])
            row[0, :n] = feeds[spec["name"]][:n]
            out[spec["name"]] = row
        return out

    def _answer(self, text: str):
        return self._run(self.tokenize(text))[0][0]

    def _run(self, feeds: dict):
        import tvm

        name, arrays = self.dispatch(self._check(feeds))
        args = [tvm.runtime.tensor(a, self._device) for a in arrays]
        out = self._vm[name](*args)
        outs = list(out) if not hasattr(out, "numpy") else [out]
        return [o.numpy() for o in outs]


def load_metadata(directory: Path) -> tuple[dict, Path]:
    """(metadata.json, library path) of a build directory, after checking the library's sha256.

    Raises ArtifactError for a missing, unreadable, truncated or tampered library.
    """
    directory = Path(directory)
    meta_path = directory / "metadata.json"
    if not meta_path.is_file():
        raise ArtifactError(f"{directory} is not a built library: no metadata.json")
    try:
        meta = json.loads(meta_path.read_text())
        lib = directory / meta["library"]["file"]
        expected = meta["library"]["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{meta_path} is unreadable: {exc}") from None
    if not lib.is_file():
        raise ArtifactError(f"{lib} is missing")
    if sha256_file(lib) != expected:
        raise ArtifactError(f"{lib} does not match the sha256 in metadata.json (truncated or tampered); "
                            "refusing to load it")
    return meta, lib


def is_cuda_library(meta: dict) -> bool:
    """A library whose kernels run on a CUDA GPU (its target's device), its host code on the CPU."""
    return (meta.get("target") or {}).get("device") == "cuda"


def load(directory: Path, threads: int | None = None, truncate: bool = False) -> LoadedModel:
    """Load a build artifact directory (model.so + metadata.json) after checking its sha256.

    A library built from a --dynamic export takes input_ids (and mask, types) of shape [B, L] for every L
    from 1 to its maximum; longer inputs are refused unless ``truncate``.

    TVM's thread pool is set as the library's target asks (:func:`configure_threads`): its threads, at
    most the CPUs this process may use, unless ``threads`` or TVM_NUM_THREADS says otherwise.

    Raises ArtifactError for a missing, truncated or tampered library, or one built for another machine.
    """
    meta, lib = load_metadata(directory)
    pool = configure_threads(meta.get("target", {}).get("threads"), threads)
    required = meta.get("target", {}).get("cpu_features") or []
    if required and elf_machine(lib) == platform.machine() and (missing := missing_cpu_features(required)):
        raise ArtifactError(f"{lib} was built for a CPU with {', '.join(missing)}, which this CPU lacks "
                            f"(target {meta['target'].get('name')}); rebuild with --target host")
    return LoadedModel.from_files(lib, meta["inputs"], meta["outputs"], vocab_size=meta.get("vocab_size"),
                                  type_vocab_size=meta.get("type_vocab_size"), pool=pool,
                                  lengths=meta.get("lengths"), truncate=truncate,
                                  cuda=is_cuda_library(meta), tokenizer=_tokenizer_file(Path(directory), meta))


def _tokenizer_file(directory: Path, meta: dict) -> Path | None:
    """The library's tokenizer.json after checking its sha256; None if it carries none."""
    entry = meta.get("tokenizer")
    if not entry:
        return None
    path = directory / entry["file"]
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (metadata.json names it)")
    if sha256_file(path) != entry["sha256"]:
        raise ArtifactError(f"{path} does not match the sha256 in metadata.json; refusing to use it")
    return path


def board_requirements() -> list[str]:
    """pip requirement lines for BOARD_PACKAGES at the versions installed here (the package's pins)."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in BOARD_PACKAGES]


def random_inputs(vocab: int, type_vocab: int, batch: int, seq_len: int, seed: int) -> dict:
    """Token ids with random-length padding (mask 1s then 0s) and two-segment token types."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, seq_len), dtype=np.int64)
    lengths = rng.integers(max(1, seq_len // 4), seq_len + 1, size=batch)
    pos = np.arange(seq_len)[None, :]
    mask = (pos < lengths[:, None]).astype(np.int64)
    split = rng.integers(1, seq_len + 1, size=batch)
    types = ((pos >= split[:, None]) & (type_vocab > 1)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
