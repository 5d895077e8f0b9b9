"""Per-layer sensitivity of ``onnx-int8-dynamic``, measured on onnxruntime with one session.

The float graph is rewritten once so that every MatMul with a constant weight can be switched
between float and its dynamic int8 form by a graph input: the activation goes through
``DynamicQuantizeLinear`` → ``DequantizeLinear`` (uint8, per tensor, what ``MatMulInteger``
sees) and the weight is replaced by its symmetric int8 round trip (per channel or per tensor,
7-bit with ``reduce_range``), each selected by ``Where``. One session then scores any set of
quantized layers: each layer alone (the sensitivity ranking) and "all but the k most
sensitive" (how many to keep in float), without a quantizer call or a session per layer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.tuning.scoring import Accept, output_error

#: the graph input holding one switch per layer (> 0.5: quantized).
SWITCHES = "edgeship_quantize_switches"


class SwitchableModel:
    """The float model with every constant-weight MatMul switchable to dynamic int8.

    Args:
        path: the pre-processed float ONNX file (the graph ``quantize_dynamic`` reads, so node
            names are the ones ``nodes_to_exclude`` takes).
        input_names: the model's inputs in order.
        per_channel, reduce_range: the weight quantization to emulate.
        modules: weight name → PyTorch module (:func:`weight_modules`), for ``layers``.

    Attributes:
        layers: ``(node name, op, module or None)`` per switchable MatMul.
    """

    def __init__(self, path: Path, input_names: list[str], per_channel: bool, reduce_range: bool,
                 modules: dict[str, str] | None = None) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path))
        self.layers = _rewrite(model, per_channel, reduce_range, modules or {})
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = input_names

    def run(self, samples: Sequence[dict[str, np.ndarray]], quantized: Iterable[str]) -> list[np.ndarray]:
        """The outputs on ``samples`` with the layers named in ``quantized`` in int8."""
        chosen = set(quantized)
        switches = np.array([1.0 if name in chosen else 0.0 for name, _, _ in self.layers], np.float32)
        collected = []
        for sample in samples:
            feeds = {name: sample[name] for name in self.input_names}
            collected.append(self.session.run(None, {**feeds, SWITCHES: switches}))
        return [np.concatenate([c[k] for c in collected]) for k in range(len(collected[0]))]


def dynamic_sensitivity(
    path: Path, input_names: list[str], options: dict[str, Any], samples: list[dict[str, np.ndarray]],
    deadline: float, progress: Any, accept: Accept | None = None, max_float: int = 0,
    modules: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Sensitivity of every constant-weight MatMul, most sensitive first, and the fewest most
    sensitive layers in float (up to ``max_float``) whose outputs ``accept`` takes.

    Returns:
        ``(rows, predicted)``: rows as :func:`converter.tuning.onnx_layers.onnx_sensitivity`'s
        (``layer``, ``op``, ``module``, ``score``, ``agreement``); ``predicted`` the count, or
        ``None`` when no count up to ``max_float`` is accepted (or no ``accept`` is given).
        ``modules`` (weight name → PyTorch module, :func:`weight_modules`) names the rows.
    """
    model = SwitchableModel(path, input_names, bool(options.get("per_channel", True)),
                            bool(options.get("reduce_range", True)), modules)
    float_outputs = model.run(samples, ())
    progress.say(f"sensitivity: switching {len(model.layers)} MatMuls to int8 one at a time on "
                 f"{len(samples)} samples (one onnxruntime session)")
    rows: list[dict[str, Any]] = []
    for i, (name, op, module) in enumerate(model.layers):
        if time.monotonic() > deadline:
            progress.say(f"sensitivity: time budget reached after {i}/{len(model.layers)} layers")
            break
        rows.append({"layer": name, "op": op, "module": module,
                     **output_error(model.run(samples, [name]), float_outputs)})
    rows.sort(key=lambda r: -r["score"])
    ranked = [r["layer"] for r in rows]
    everything = [name for name, _, _ in model.layers]
    for k in range(1, min(max_float, len(ranked)) + 1) if accept else ():
        if time.monotonic() > deadline:
            break
        kept_float = set(ranked[:k])
        if accept(model.run(samples, [n for n in everything if n not in kept_float])):
            return rows, k
    return rows, None


def _rewrite(model: Any, per_channel: bool, reduce_range: bool,
             modules: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """Rewrite ``model`` in place; returns ``(node name, op, module)`` per switchable layer."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    targets = [n for n in graph.node if n.op_type == "MatMul" and n.name and n.input[1] in weights
               and len(weights[n.input[1]].dims) == 2]
    graph.input.append(helper.make_tensor_value_info(SWITCHES, TensorProto.FLOAT, [len(targets)]))
    added_inits, layers = [], []
    new_nodes: dict[str, list[Any]] = {}
    for i, node in enumerate(targets):
        tag = f"edgeship_switch_{i}"
        weight = numpy_helper.to_array(weights[node.input[1]])
        added_inits += [numpy_helper.from_array(fake_quantized_weight(weight, per_channel, reduce_range),
                                                f"{tag}_wq"),
                        numpy_helper.from_array(np.array([i], np.int64), f"{tag}_index")]
        a = node.input[0]
        layers.append((node.name, node.op_type, modules.get(node.input[1]) or _module_of(node.input[1])))
        new_nodes[node.name] = [
            helper.make_node("Gather", [SWITCHES, f"{tag}_index"], [f"{tag}_g"], axis=0),
            helper.make_node("Constant", [], [f"{tag}_half"], value=numpy_helper.from_array(
                np.array([0.5], np.float32))),
            helper.make_node("Greater", [f"{tag}_g", f"{tag}_half"], [f"{tag}_on"]),
            helper.make_node("DynamicQuantizeLinear", [a], [f"{tag}_aq", f"{tag}_as", f"{tag}_az"]),
            helper.make_node("DequantizeLinear", [f"{tag}_aq", f"{tag}_as", f"{tag}_az"], [f"{tag}_ad"]),
            helper.make_node("Where", [f"{tag}_on", f"{tag}_ad", a], [f"{tag}_a"]),
            helper.make_node("Where", [f"{tag}_on", f"{tag}_wq", node.input[1]], [f"{tag}_w"]),
        ]
        node.input[0], node.input[1] = f"{tag}_a", f"{tag}_w"
    nodes = []
    for node in graph.node:
        nodes += new_nodes.get(node.name, [])
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added_inits)
    return layers


def _module_of(weight: str) -> str | None:
    """The PyTorch module a MatMul's weight came from, when the exporter kept its name."""
    return weight[: -len(".weight")] if weight.endswith(".weight") else None


def weight_modules(path: Path, module: Any) -> dict[str, str]:
    """ONNX weight initializer → the PyTorch module it came from, matched by value.

    The dynamo exporter stores a Linear's weight transposed under a generated name (``val_55``);
    its bytes still equal ``weight.T``'s, which names the layer in the report.
    """
    import hashlib

    import onnx
    import torch
    from onnx import numpy_helper

    digests = {}
    for name, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            array = weight.detach().float().numpy()
            for candidate in (array, array.T):
                digests.setdefault(hashlib.sha1(np.ascontiguousarray(candidate).tobytes()).digest(), name)
    found = {}
    for tensor in onnx.load(str(path)).graph.initializer:
        if len(tensor.dims) == 2 and tensor.data_type == onnx.TensorProto.FLOAT:
            digest = hashlib.sha1(np.ascontiguousarray(numpy_helper.to_array(tensor)).tobytes()).digest()
            if digest in digests:
                found[tensor.name] = digests[digest]
    return found


def fake_quantized_weight(weight: np.ndarray, per_channel: bool, reduce_range: bool) -> np.ndarray:
    """Symmetric int8 round trip of a ``[K, N]`` MatMul weight, per output column when
    ``per_channel`` (what ``quantize_dynamic`` stores: int8, 7-bit with ``reduce_range``)."""
    qmax = 64.0 if reduce_range else 127.0
    peak = np.abs(weight).max(axis=0, keepdims=True) if per_channel else np.abs(weight).max()
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    return (np.clip(np.rint(weight / scale), -qmax, qmax) * scale).astype(weight.dtype)
