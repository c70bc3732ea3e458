"""Accuracy-aware fallback: when a recipe misses the fidelity gate, keep the fewest layers in float that pass.

As NNCF's quantize_with_accuracy_control does: rank the quantized layers by measured sensitivity (the
mean cosine to fp32 gained by running that one layer in float, on calibration texts), then return layers
to float in that order until the held-out gate passes. A layer returns to float by graph surgery on the
QDQ model: its inputs read the float tensors again (the activation before its QuantizeLinear, the float
weight and bias of the rewritten fp32 graph), so onnxruntime's scales for every other layer stay as
calibrated. Quantizers nothing reads any more are removed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

COMPUTE = ("Conv", "MatMul", "Gemm")
LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def quantized_layers(model) -> list[str]:
    """Names of the compute nodes with a DequantizeLinear on an input, in graph order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in COMPUTE
            and any(getattr(producer.get(i), "op_type", None) == "DequantizeLinear" for i in n.input)]


def to_float(model, layers: set[str], float_weights: dict[str, np.ndarray]) -> None:
    """Return ``layers`` to float in place (see the module docstring). ``float_weights``: the fp32 graph's
    initializers that quantize_static replaced by ``<name>_quantized``."""
    from onnx import helper, numpy_helper

    producer = {o: n for n in model.graph.node for o in n.output}
    have = {i.name for i in model.graph.initializer}
    added: list[tuple[int, object]] = []  # (position, node): layout ops repeated on the float tensor

    def unquantized(t: str) -> str:
        """The float tensor that ``t`` rounds: through Q -> DQ pairs and the layout ops between them."""
        n = producer.get(t)
        if n is not None and n.op_type == "DequantizeLinear" and getattr(producer.get(n.input[0]), "op_type", "") \
                == "QuantizeLinear":
            return unquantized(producer[n.input[0]].input[0])
        if n is not None and n.op_type in LAYOUT:
            src = unquantized(n.input[0])
            if src != n.input[0]:
                out = f"{t}_float"
                if out not in producer:
                    copy = helper.make_node(n.op_type, [src, *n.input[1:]], [out], name=f"{n.name}_float")
                    copy.attribute.extend(n.attribute)
                    producer[out] = copy
                    added.append((list(model.graph.node).index(n) + 1, copy))
                return out
        return t

    for node in model.graph.node:
        if node.name not in layers:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            src = dq.input[0]
            q = producer.get(src)
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = unquantized(q.input[0])
            elif src.endswith("_quantized") and src[: -len("_quantized")] in float_weights:
                orig = src[: -len("_quantized")]
                name = orig if orig not in producer else f"{orig}_float"  # a DQ may output the old name
                if name not in have:
                    model.graph.initializer.append(numpy_helper.from_array(float_weights[orig], name))
                    have.add(name)
                node.input[k] = name
    for pos, copy in sorted(added, key=lambda a: -a[0]):  # right after the op they repeat, back to front
        model.graph.node.insert(pos, copy)
    # quantizers on the way out: what reads back through Q -> DQ, except an integer layer, reads the float
    # tensor again where the Q rounds a float layer's output (a recipe quantizing outputs: the bias add)
    # or no integer layer reads the Q any more (a residual add beside the returned layers)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        dqs = [c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]
        readers = [(dq, r) for dq in dqs for r in consumers.get(dq.output[0], [])]
        integer = {id(r) for _, r in readers if r.op_type in COMPUTE and r.name not in layers}
        if integer and getattr(producer.get(q.input[0]), "name", None) not in layers:
            continue
        for dq, r in readers:
            if id(r) not in integer:
                r.input[:] = [q.input[0] if i == dq.output[0] else i for i in r.input]
    _prune(model)


def _prune(model) -> None:
    """Drop nodes whose outputs nothing reads (the orphaned quantizers), then unread initializers."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    read = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)


def search(model, float_weights: dict[str, np.ndarray], rank_score: Callable[[bytes], float],
           passes: Callable[[bytes], bool], max_layers: int | None = None) -> tuple[list[str], list[dict]]:
    """(layers kept float, ranking) for the fewest layers, in sensitivity order, whose return to float
    makes ``passes`` true; ([], ranking) if none up to ``max_layers`` do. ``model`` is left with them in
    float. ``rank_score(model_bytes)``: the mean cosine on calibration texts."""
    import onnx

    layers = quantized_layers(model)
    base = rank_score(model.SerializeToString())
    ranking = []
    for name in layers:
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        to_float(trial, {name}, float_weights)
        ranking.append({"layer": name, "gain": rank_score(trial.SerializeToString()) - base})
    ranking.sort(key=lambda r: -r["gain"])
    for n in range(1, min(len(ranking), max_layers or len(ranking)) + 1):
        keep = {r["layer"] for r in ranking[:n]}
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        to_float(trial, keep, float_weights)
        if passes(trial.SerializeToString()):
            model.CopyFrom(trial)
            return [r["layer"] for r in ranking[:n]], ranking
    return [], ranking
