"""The runtimes `squeezeedge bench` times side by side: the built libraries and their baselines.

Every runner is ``fn(feed) -> output array`` on the same int64 feed, with the same thread count:
PyTorch eager fp32 (the model the export came from), onnxruntime fp32 and int8 QDQ (the export and
quantize artifacts the library was built from), TFLite fp32 and int8 through ai-edge-litert (LiteRT,
the maintained successor of tflite-runtime, whose last release, 2.14 of 2023, predates the op versions
today's converter writes). The TFLite models come from a real converter: litert-torch converts the
PyTorch model, ai-edge-quantizer quantizes it statically (int8 weights and activations) on the
shipped calibration corpus. They are cached as a ``tflite`` stage artifact.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from squeezeedge import console
from squeezeedge.artifact import Artifact, load_artifact, run_stage
from squeezeedge.errors import ArtifactError, SqueezeEdgeError

ORT_RECIPE = "onnxruntime int8 (its own recipe)"
BASELINE_RUNTIMES = {"torch": ("pytorch fp32",), "ort": ("onnxruntime fp32", "onnxruntime int8", ORT_RECIPE),
                     "tflite": ("tflite fp32", "tflite int8")}
BASELINES = tuple(BASELINE_RUNTIMES)
TFLITE_CALIB_TEXTS = 32


class Skip(Exception):
    """A runtime that cannot run here; the reason goes into the report and the rest still run."""


@dataclass
class Runner:
    name: str  # e.g. "onnxruntime int8"
    family: str  # squeezeedge | pytorch | onnxruntime | tflite
    precision: str  # fp32 | int8
    fn: Callable[[dict], object]
    model_bytes: int | None = None
    info: dict = field(default_factory=dict)
    timer: Callable[[], float] | None = None  # device-side ms of one call (RPC); None: wall clock of fn
    any_length: bool = False  # takes [B, L] inputs for any L up to the library's maximum


@dataclass(frozen=True)
class Lineage:
    """The artifacts a library was built from (export always; quantize for int8 libraries)."""

    export: Artifact | None
    quantize: Artifact | None
    missing: str = ""


def lineage(build: Artifact) -> Lineage:
    """Follow parent links back to the export; a moved or deleted parent is reported, not fatal."""
    chain: dict[str, Artifact] = {}
    art = build
    while (parent := art.manifest.get("parent")) is not None:
        try:
            art = load_artifact(Path(parent["path"]), verify=False)
        except ArtifactError:
            return Lineage(chain.get("export"), chain.get("quantize"), f"parent artifact {parent['path']} not found")
        if art.sha256 != parent["sha256"]:
            return Lineage(None, None, f"{parent['path']} changed since the library was built")
        chain[art.stage] = art
    return Lineage(chain.get("export"), chain.get("quantize"))


def squeezeedge_runner(lib_dir: Path, threads: int | None = None) -> Runner:
    import json

    from squeezeedge import runtime

    model = runtime.load(lib_dir, threads=threads)
    meta = json.loads((Path(lib_dir) / "metadata.json").read_text())
    return Runner(f"squeezeedge {meta['precision']} ({meta['target']['name']})", "squeezeedge", meta["precision"],
                  lambda feed: model(**feed)[0], meta["library"]["bytes"],
                  {"library": str(lib_dir), "target": meta["target"]["name"], "tuning": meta.get("tuning"),
                   "int8": meta.get("int8"), "thread_pool": model.pool, "lengths": meta.get("lengths")},
                  any_length=bool(meta.get("lengths")))


def torch_runner(export: Artifact, threads: int) -> Runner:
    import torch

    from squeezeedge.stages.export import ExportConfig
    from squeezeedge.stages.models import INPUT_NAMES, build_torch_model

    cfg = {k: v for k, v in export.manifest["config"].items() if k in ExportConfig.__dataclass_fields__}
    with _quiet():
        model, *_ = build_torch_model(ExportConfig(**cfg).spec())
    torch.set_num_threads(threads)

    def fn(feed):
        with torch.inference_mode():
            return model(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES))[0].numpy()

    params = sum(p.numel() for p in model.parameters())
    return Runner("pytorch fp32", "pytorch", "fp32", fn, params * 4, {"torch_threads": torch.get_num_threads()},
                  any_length=True)


def ort_runner(art: Artifact, precision: str, threads: int) -> Runner:
    import onnxruntime as ort

    path = art.file("model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see bench.quiet_thread_pools
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    dynamic = any(isinstance(d, str) for d in sess.get_inputs()[0].shape)  # a --dynamic export (and its int8)
    return Runner(f"onnxruntime {precision}", "onnxruntime", precision, lambda feed: sess.run(None, feed)[0],
                  path.stat().st_size, {"model": str(path)}, any_length=dynamic)


# --- TFLite -----------------------------------------------------------------------------------------

def tflite_models(export: Artifact, out: Path) -> Artifact:
    """Convert the export's PyTorch model with litert-torch (fp32) and ai-edge-quantizer (static int8)."""
    try:
        from importlib.metadata import version

        versions = {p: version(p) for p in ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")}
    except Exception as exc:  # PackageNotFoundError
        raise Skip(f"TFLite converter not installed ({exc}); run 'make setup'") from None
    from squeezeedge.stages.calibdata import DEFAULT_CORPUS, encode, load_tokenizer, read_texts, split

    cfg = export.manifest["config"]
    corpus = read_texts(DEFAULT_CORPUS)
    key = {"versions": versions, "recipe": "static_wi8_ai8", "calib_texts": TFLITE_CALIB_TEXTS,
           "data_sha256": corpus.sha256}

    def work(tmp: Path) -> dict:
        with _quiet():  # our progress lines still reach the real stderr
            return _convert(tmp)

    def _convert(tmp: Path) -> dict:
        import numpy as np
        import torch

        from squeezeedge.stages.export import ExportConfig
        from squeezeedge.stages.models import INPUT_NAMES, build_torch_model

        model, config, *_ = build_torch_model(
            ExportConfig(**{k: v for k, v in cfg.items() if k in ExportConfig.__dataclass_fields__}).spec())
        tok, _ = load_tokenizer(cfg.get("checkpoint"), cfg["seq_len"])
        calib, _ = split(corpus.texts, TFLITE_CALIB_TEXTS, 1, 0, corpus.path)
        feeds = encode(tok, calib, config.vocab_size)
        batch = cfg["batch"]
        samples = [{n: feeds[n][i:i + batch].astype(np.int32) for n in INPUT_NAMES}
                   for i in range(0, TFLITE_CALIB_TEXTS - batch + 1, batch)]
        with console.step("converting to TFLite with litert-torch"):
            import litert_torch

            example = tuple(torch.from_numpy(samples[0][n].astype(np.int64)) for n in INPUT_NAMES)
            litert_torch.convert(model, example).export(str(tmp / "model-fp32.tflite"))
        with console.step(f"quantizing to int8 with ai-edge-quantizer on {TFLITE_CALIB_TEXTS} texts"):
            from ai_edge_quantizer import quantizer, recipe

            q = quantizer.Quantizer(str(tmp / "model-fp32.tflite"))
            q.load_quantization_recipe(recipe.static_wi8_ai8())
            sig, names = _signature(tmp / "model-fp32.tflite")
            calib_feeds = [dict(zip(names, (s[n] for n in INPUT_NAMES))) for s in samples]
            result = q.quantize(q.calibrate({sig: calib_feeds}))
            result.export_model(str(tmp / "model-int8.tflite"), overwrite=True)
        return {"versions": versions, "files": {p: (tmp / f"model-{p}.tflite").stat().st_size for p in ("fp32", "int8")}}

    try:
        return run_stage("tflite", out, key, work, parent=export).artifact
    except SqueezeEdgeError:
        raise
    except Exception as exc:  # a converter failure is a skipped baseline, not a failed benchmark
        raise Skip(f"TFLite conversion failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}") \
            from None


def _signature(path: Path) -> tuple[str, list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(str(path)).get_signature_list()
    key = next(iter(sigs))
    return key, list(sigs[key]["inputs"])


@contextlib.contextmanager
def _quiet():
    """The converters print progress bars and absl logs; keep them for -v only."""
    buf = io.StringIO()
    with console.native_stderr_to_debug(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), \
            console.quiet_warnings():
        yield
    console.debug(buf.getvalue())


def tflite_runner(models: Artifact, precision: str, threads: int) -> Runner:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from squeezeedge.stages.models import INPUT_NAMES

    path = models.file(f"model-{precision}.tflite")
    with console.native_stderr_to_debug():
        interp = Interpreter(str(path), num_threads=threads)
        sig, names = _signature(path)
        run = interp.get_signature_runner(sig)
    out_detail = interp.get_output_details()[0]
    scale, zero = out_detail["quantization"]

    def fn(feed):
        out = next(iter(run(**{a: feed[n].astype(np.int32) for a, n in zip(names, INPUT_NAMES)}).values()))
        return (out.astype(np.float32) - zero) * scale if scale else out

    return Runner(f"tflite {precision}", "tflite", precision, fn, path.stat().st_size,
                  {"model": str(path), "runtime": "ai-edge-litert (XNNPACK delegate)"})


def baseline_runners(wanted: tuple[str, ...], chain: Lineage, threads: int, workdir: Path, feed: dict
                     ) -> tuple[list[Runner], dict[str, str]]:
    """Build every wanted baseline that can run here; (runners, {name: why it was skipped})."""
    runners, skipped = [], {}
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    plan: list[tuple[str, Callable[[], Runner]]] = []
    if "torch" in wanted:
        plan.append(("pytorch fp32", lambda: torch_runner(_need(chain.export, chain), threads)))
    if "ort" in wanted:
        plan.append(("onnxruntime fp32", lambda: ort_runner(_need(chain.export, chain), "fp32", threads)))
        plan.append(("onnxruntime int8", lambda: ort_runner(_need(chain.quantize, chain, "int8"), "int8", threads)))
        if chain.quantize is not None and chain.export is not None and _own_recipe_differs(chain.quantize):
            plan.append((ORT_RECIPE, lambda: _ort_recipe_runner(chain, threads, workdir)))
    if "tflite" in wanted:
        tfl: dict = {}

        def tflite(precision):
            if "art" not in tfl:
                export = _need(chain.export, chain)
                tfl["art"] = tflite_models(export, workdir / "tflite" / export.sha256[:16])
            return tflite_runner(tfl["art"], precision, threads)

        plan += [("tflite fp32", lambda: tflite("fp32")), ("tflite int8", lambda: tflite("int8"))]
    for name, make in plan:
        try:
            runner = make()
            runner.fn(feed)  # one call now: a baseline that cannot run is skipped, not fatal
            runners.append(runner)
        except SqueezeEdgeError:
            raise
        except Exception as exc:  # Skip, or the runtime itself failing here
            why = str(exc) if isinstance(exc, Skip) else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
            skipped[name] = why
            console.info(f"  {name}: skipped ({why})")
    return runners, skipped


def _own_recipe_differs(q: Artifact) -> bool:
    """The library's int8 model is not what onnxruntime's quantize_static makes by default: onnxruntime
    then runs it slower than its own recipe (no output quantizer: no fused QLinearConv/QLinearMatMul)."""
    sch = q.results["scheme"]
    return bool(sch.get("float_outputs") or sch.get("smooth_quant_alpha") or sch.get("embeddings", "float") != "float")


def _ort_recipe_runner(chain: Lineage, threads: int, workdir: Path, activations: str | None = None) -> Runner:
    """onnxruntime int8 on the same export quantized onnxruntime's way (every output quantized, no
    smoothing, float embeddings), same calibration texts, method and activation scheme (or ``activations``):
    onnxruntime's fastest int8, so the library is not only compared with onnxruntime running our recipe."""
    from squeezeedge.stages.quantize import QuantizeConfig, quantize_model

    q = chain.quantize
    key, sch = q.manifest["config"], q.results["scheme"]
    cfg = QuantizeConfig(calibration_data=Path(q.results["data"]["path"]), text_column=key.get("text_column"),
                         num_samples=key["num_samples"], num_heldout=key["num_heldout"], method=key["method"],
                         per_channel=sch["per_channel"], activations=activations or sch["activations"],
                         target=sch["preset"],
                         seed=key["seed"], float_outputs=(), smooth_quant=None, int8_embeddings=False,
                         fallback=False, min_cosine=0.0, min_agreement=0.0)
    console.info(f"  {ORT_RECIPE}: quantizing the export onnxruntime's way")
    art = quantize_model(chain.export.path, cfg,
                         workdir / "ort-recipe" / f"{chain.export.sha256[:16]}-{cfg.activations}").artifact
    runner = ort_runner(art, "int8", threads)
    runner.name = ORT_RECIPE
    return runner


def _need(art: Artifact | None, chain: Lineage, what: str = "export") -> Artifact:
    if art is None:
        raise Skip(chain.missing or f"no {what} model in the library's lineage (bench an int8 library for it)")
    return art
