"""Which op of a litert-torch ``.tflite`` is which layer: computing ops by their output tensor
names (ai-edge-quantizer's op scope), the PyTorch module a name encodes, and the ops that
carry weights. Shared by the ``tflite-int8`` builder (per-layer granularity) and the tuner's
sensitivity runs (:mod:`converter.tuning.tflite_layers`); ai-edge-quantizer is imported inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: ops that only move data around: quantizing one alone says nothing about the model.
_SKIP_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "QUANTIZE", "DEQUANTIZE"}
#: ops that hold weights (what the dynamic recipe quantizes, what has a weight granularity).
WEIGHTED_OPS = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV",
                "EMBEDDING_LOOKUP", "BATCH_MATMUL"}


def computing_ops(path: Path) -> list[tuple[str, str]]:
    """``(first output tensor name, op name)`` of the main subgraph's ops, layout ops left out."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(path.read_bytes())
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators:
        code = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        name = code.name if code is not None else "CUSTOM"
        outputs = [int(t) for t in op.outputs if t >= 0]
        if name in _SKIP_OPS or not outputs:
            continue
        ops.append((fb.get_tensor_name(graph.tensors[outputs[0]]), name))
    return ops


def module_of_scope(scope: str) -> str | None:
    """The PyTorch module path in a litert-torch tensor name, e.g. ``features.7`` from
    ``pkg.Net/torch.nn.modules.container.Sequential_features/torch.nn.modules.conv.Conv2d_7;1``.

    A fused op names all its parts (``ReLU_9;;BatchNorm2d_8;;Conv2d_7``): the Conv/Linear part
    is preferred.
    """
    pieces = [p for p in scope.split(";") if "/" in p]
    if not pieces:
        return None
    weighted = [p for p in pieces if any(k in p.rsplit("/", 1)[-1] for k in ("Conv", "Linear"))]
    parts = (weighted or pieces)[0].split("/")[1:]
    names = [part.rsplit(".", 1)[-1].split("_", 1)[1] for part in parts if "_" in part.rsplit(".", 1)[-1]]
    return ".".join(names) or None


def resolve_module(model: Any, dotted: str | None) -> str | None:
    """``dotted`` as a real module path of ``model``: litert-torch names a ``ModuleList`` item by
    its index alone (``bert.encoder.0``), so the list's own name is put back
    (``bert.encoder.layer.0``). Unchanged when it cannot be resolved."""
    if not dotted or model is None:
        return dotted
    current, path = model, []
    for token in dotted.split("."):
        children = dict(current.named_children())
        if token not in children:
            holders = [name for name, child in children.items() if token in dict(child.named_children())]
            if len(holders) != 1:
                return dotted
            path.append(holders[0])
            current = children[holders[0]]
            children = dict(current.named_children())
        path.append(token)
        current = children[token]
    return ".".join(path)
