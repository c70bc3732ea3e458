"""The model as TVM sees it: the artifact's ONNX imported into Relax at a static shape (the first step of
squeezeedge.lowering.pipeline), and the small helpers around it."""

from __future__ import annotations

from pathlib import Path

from squeezeedge.artifact import Artifact, load_artifact
from squeezeedge.errors import CompileError


def static_onnx(path: Path, dims: dict[str, int], scratch: Path) -> Path:
    """Workaround for TVM 0.27's importer on dynamic-shape models: fix the named dims, then let
    onnxruntime's BASIC optimizer fold the shape arithmetic (Shape/Range/Expand) away.

    Imported as-is, a dynamic SqueezeBERT export fails in VM codegen ("CodeGenVM cannot emit this Relax
    operator directly: R.add(...)") even with a static shape_dict; its Expand and ConstantOfShape
    converters also mishandle symbolic shapes. Static models skip this.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    model = onnx.load(str(path))
    for name, value in dims.items():
        make_dim_param_fixed(model.graph, name, value)
    fixed, out = scratch / "fixed.onnx", scratch / "static.onnx"
    onnx.save(model, str(fixed))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(fixed), opts, providers=["CPUExecutionProvider"])
    return out


def import_onnx(path: Path, inputs: list[dict], static_dims: dict[str, int] | None = None):
    """ONNX -> Relax IRModule with static input shapes; unknown ops are named.

    ``inputs`` are the artifact's input records; a symbolic dim (a --dynamic export) takes its value
    from ``static_dims`` (the export's batch and seq-len) and goes through :func:`static_onnx`.
    """
    import tempfile

    import onnx
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    symbolic = {d for i in inputs for d in i["shape"] if not isinstance(d, int)}
    if symbolic:
        if not static_dims or symbolic - set(static_dims):
            raise CompileError(f"{path}: dynamic dims {sorted(symbolic)} need static values to build")
        with tempfile.TemporaryDirectory() as scratch:
            fixed = static_onnx(path, {d: static_dims[d] for d in symbolic}, Path(scratch))
            inputs = [i | {"shape": [static_dims.get(d, d) for d in i["shape"]]} for i in inputs]
            return import_onnx(fixed, inputs)
    model = onnx.load(str(path))
    known = _get_convert_map()
    missing = sorted({n.op_type for n in model.graph.node if n.op_type not in known})
    if missing:
        node = next(n for n in model.graph.node if n.op_type == missing[0])
        raise CompileError(f"{path}: TVM's ONNX importer cannot convert operator {', '.join(missing)} "
                           f"(first at node '{node.name}')")
    shapes = {i["name"]: [int(d) for d in i["shape"]] for i in inputs}
    try:
        return from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:
        raise CompileError(f"{path}: TVM could not import the model: {first_line(exc)}") from exc


def _static_dims(parent: Artifact) -> dict[str, int]:
    """Values for a --dynamic export's symbolic dims: the batch and seq-len it was exported (and validated) at."""
    conf = parent.manifest["config"] if parent.stage == "export" else load_artifact(
        Path(parent.manifest["parent"]["path"]), verify=False).manifest["config"]
    return {"batch": conf["batch"], "seq": conf["seq_len"]}


def static_inputs(parent: Artifact, key: str = "inputs") -> list[dict]:
    """The artifact's input (or output) records with any symbolic dim replaced by its static value."""
    records = parent.results[key]
    dims = _static_dims(parent) if any(not isinstance(d, int) for i in records for d in i["shape"]) else {}
    return [i | {"shape": [dims.get(d, d) for d in i["shape"]]} for i in records]


def first_line(exc: BaseException) -> str:
    """The last meaningful line of a TVM error (its tracebacks are long)."""
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("Traceback", "  File", "    "))]
    return (lines[-1] if lines else type(exc).__name__)[:300]
