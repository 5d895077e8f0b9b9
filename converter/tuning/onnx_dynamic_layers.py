"""Per-layer sensitivity measured on onnxruntime with one session: the dynamic int8 layers
kept in float, and the static int8 layers whose weights may be per tensor.

The float graph is rewritten once so that every layer with a constant weight can be switched
between two forms by a graph input, each selected by ``Where``. For ``onnx-int8-dynamic``
(:func:`dynamic_switch`): float, or the activation through ``DynamicQuantizeLinear`` →
``DequantizeLinear`` (uint8, per tensor, what ``MatMulInteger`` sees) and the weight replaced
by its symmetric int8 round trip (per channel or per tensor, 7-bit with ``reduce_range``). For
the static kinds' weight granularity (:func:`granularity_switch`, used by
:mod:`converter.tuning.granularity`): the int8 weight per channel, or per tensor. One session
then scores any set of switched layers: each alone (the ranking) and the k first of a ranking
together, without a quantizer call or a session per layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.tuning.scoring import Accept, output_error

#: the graph input holding one switch per layer (> 0.5: switched on).
SWITCHES = "edgeship_quantize_switches"
#: ``(weight, its output-channel axis) -> weight`` as a layer computes with it.
WeightForm = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class LayerSwitch:
    """What a layer's switch toggles: which ops, the weight off and on, and whether the
    activation is dynamically quantized when on."""

    ops: frozenset[str]
    off: WeightForm
    on: WeightForm
    quantize_activation: bool


def dynamic_switch(per_channel: bool, reduce_range: bool) -> LayerSwitch:
    """MatMuls: float off, ``quantize_dynamic``'s int8 on."""
    return LayerSwitch(frozenset({"MatMul"}), lambda w, axis: w,
                       lambda w, axis: fake_quantized_weight(w, per_channel, reduce_range, axis),
                       quantize_activation=True)


def granularity_switch(reduce_range: bool) -> LayerSwitch:
    """Conv / Gemm / MatMul weights: int8 per output channel off, int8 per tensor on."""
    return LayerSwitch(frozenset({"Conv", "Gemm", "MatMul"}),
                       lambda w, axis: fake_quantized_weight(w, True, reduce_range, axis),
                       lambda w, axis: fake_quantized_weight(w, False, reduce_range, axis),
                       quantize_activation=False)


class SwitchableModel:
    """The float model with every constant-weight layer switchable between two forms.

    Args:
        path: the pre-processed float ONNX file (the graph the quantizer reads, so node and
            weight names are the ones its options take).
        input_names: the model's inputs in order.
        per_channel, reduce_range: the weight quantization of the default :func:`dynamic_switch`.
        modules: weight name → PyTorch module (:func:`weight_modules`), for ``layers``.
        switch: what the switches toggle (default: :func:`dynamic_switch`).

    Attributes:
        layers: ``(node name, op, module or None)`` per switchable layer.
        weights: node name → its weight initializer's name.
    """

    def __init__(self, path: Path, input_names: list[str], per_channel: bool = True,
                 reduce_range: bool = True, modules: dict[str, str] | None = None,
                 switch: LayerSwitch | None = None) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path))
        self.weights: dict[str, str] = {}
        self.layers = _rewrite(model, switch or dynamic_switch(per_channel, reduce_range),
                               modules or {}, self.weights)
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


def _rewrite(model: Any, switch: LayerSwitch, modules: dict[str, str],
             weight_of: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """Rewrite ``model`` in place; returns ``(node name, op, module)`` per switchable layer and
    fills ``weight_of`` (node name → weight name)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    targets = [n for n in graph.node if n.op_type in switch.ops and n.name and len(n.input) > 1
               and n.input[1] in weights and channel_axis(n, weights[n.input[1]].dims) is not None]
    graph.input.append(helper.make_tensor_value_info(SWITCHES, TensorProto.FLOAT, [len(targets)]))
    added_inits, layers = [], []
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    for i, node in enumerate(targets):
        tag = f"edgeship_switch_{i}"
        weight = numpy_helper.to_array(weights[node.input[1]])
        axis = channel_axis(node, weights[node.input[1]].dims)
        added_inits += [numpy_helper.from_array(switch.on(weight, axis), f"{tag}_won"),
                        numpy_helper.from_array(switch.off(weight, axis), f"{tag}_woff"),
                        numpy_helper.from_array(np.array([i], np.int64), f"{tag}_index")]
        a, out = node.input[0], node.output[0]
        weight_of[node.name] = node.input[1]
        layers.append((node.name, node.op_type, modules.get(node.input[1]) or _module_of(node.input[1])))
        # both forms are computed and the output selected: constant weights keep the runtime's
        # pre-packed kernels (selecting the weight instead: 105 ms a sample on a CNN, not 8)
        before[node.name] = [
            helper.make_node("Gather", [SWITCHES, f"{tag}_index"], [f"{tag}_g"], axis=0),
            helper.make_node("Constant", [], [f"{tag}_half"], value=numpy_helper.from_array(
                np.array([0.5], np.float32))),
            helper.make_node("Greater", [f"{tag}_g", f"{tag}_half"], [f"{tag}_on"]),
        ]
        a_on = a
        if switch.quantize_activation:
            a_on = f"{tag}_ad"
            before[node.name] += [
                helper.make_node("DynamicQuantizeLinear", [a], [f"{tag}_aq", f"{tag}_as", f"{tag}_az"]),
                helper.make_node("DequantizeLinear", [f"{tag}_aq", f"{tag}_as", f"{tag}_az"], [a_on]),
            ]
        on = helper.make_node(node.op_type, [a_on, f"{tag}_won", *node.input[2:]], [f"{tag}_yon"],
                              name=f"{tag}_on_node")
        on.attribute.extend(node.attribute)
        before[node.name].append(on)
        node.input[1], node.output[0] = f"{tag}_woff", f"{tag}_yoff"
        after[node.name] = [helper.make_node("Where", [f"{tag}_on", f"{tag}_yon", f"{tag}_yoff"], [out])]
    nodes = []
    for node in graph.node:
        nodes += [*before.get(node.name, []), node, *after.get(node.name, [])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added_inits)
    return layers


def channel_axis(node: Any, dims: Sequence[int]) -> int | None:
    """The output-channel axis of a node's constant weight (``None``: not a layer weight):
    Conv ``[O, I, ...]`` 0, MatMul ``[K, N]`` 1, Gemm 0 with ``transB`` else 1."""
    from onnx import helper

    rank = len(dims)
    if node.op_type == "Conv":
        return 0 if rank >= 3 else None
    if rank != 2:
        return None
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return 0 if attrs.get("transB", 0) else 1
    return 1


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


def fake_quantized_weight(weight: np.ndarray, per_channel: bool, reduce_range: bool,
                          axis: int = 1) -> np.ndarray:
    """Symmetric int8 round trip of a weight, per output channel (``axis``; a ``[K, N]``
    MatMul's columns by default) when ``per_channel`` (what onnxruntime's quantizers store:
    int8, 7-bit with ``reduce_range``)."""
    qmax = 64.0 if reduce_range else 127.0
    others = tuple(d for d in range(weight.ndim) if d != axis)
    peak = np.abs(weight).max(axis=others, keepdims=True) if per_channel else np.abs(weight).max()
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    return (np.clip(np.rint(weight / scale), -qmax, qmax) * scale).astype(weight.dtype)
