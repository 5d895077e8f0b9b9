"""Per-layer sensitivity of ``onnx-int8-static``: quantize one node at a time.

Each quantizable node of the pre-processed graph (the graph ``quantize_static`` works on, so
node names match ``float_layers``) is quantized alone (``nodes_to_quantize``: its activation
inputs and weights get QDQ pairs) with the variant's calibration ranges, and the model is run
in-process on a few eval samples. The score is the relative squared error of the outputs
against the float model, ``Σ‖q − f‖² / Σ‖f‖²``; top-1 agreement with float is reported too.
Calibration runs once (ranges are cached per method), so a node costs one ``quantize_static``
and one pass over the samples.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from converter.catalogue import VARIANT_KINDS
from converter.export.base import ExportContext, VariantRequest
from converter.tuning.scoring import output_error


def onnx_sensitivity(
    base: Path, ctx: ExportContext, options: dict[str, Any], samples: list[dict[str, np.ndarray]],
    deadline: float,
) -> list[dict[str, Any]]:
    """Sensitivity of every quantizable node, most sensitive first.

    Args:
        base: the float ONNX export.
        ctx: its export context (calibration samples, work directory, progress).
        options: the ``onnx-int8-static`` options to measure under (calibration, per_channel).
        samples: eval samples to run.
        deadline: ``time.monotonic()`` value after which the remaining nodes are skipped.

    Returns:
        One row per node measured: ``layer`` (node name, what ``float_layers`` takes),
        ``op``, ``module`` (the PyTorch module its weight comes from, when known), ``score``,
        ``agreement``.
    """
    from converter.export.onnx_common import preprocess
    from converter.export.onnx_static import quantize_file, static_settings

    kind = VARIANT_KINDS["onnx-int8-static"]
    request = VariantRequest("sensitivity", kind, {**kind.options, **options, "float_layers": ()})
    _, _, settings = static_settings(request, base)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        pre = preprocess(base, Path(tmp), ctx)
        float_outputs = run_onnx(pre, samples, [s.name for s in ctx.inputs])
        nodes = quantizable_nodes(pre, settings["op_types_to_quantize"])
        ctx.progress.say(f"sensitivity: quantizing {len(nodes)} ONNX nodes one at a time "
                         f"on {len(samples)} samples")
        for i, (name, op, module) in enumerate(nodes):
            if time.monotonic() > deadline:
                ctx.progress.say(f"sensitivity: time budget reached after {i}/{len(nodes)} nodes")
                break
            out = Path(tmp) / f"node-{i}.onnx"
            quantize_file("sensitivity", pre, out, ctx, {**settings, "nodes_to_quantize": [name]})
            if not _has_qdq(out):
                continue  # the quantizer has nothing to do for this node alone
            outputs = run_onnx(out, samples, [s.name for s in ctx.inputs])
            rows.append({"layer": name, "op": op, "module": module,
                         **output_error(outputs, float_outputs)})
    rows.sort(key=lambda r: -r["score"])
    return rows


def quantizable_nodes(path: Path, op_types: list[str] | None) -> list[tuple[str, str, str | None]]:
    """``(node name, op type, PyTorch module)`` of the nodes ``quantize_static`` may quantize."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry

    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer}
    allowed = set(op_types) if op_types else set(QDQRegistry) | {"Add", "Mul", "Concat"}
    nodes = []
    for node in graph.node:
        if node.op_type not in allowed or not node.name:
            continue
        weight = next((i for i in node.input[1:] if i in weights and i.endswith(".weight")), None)
        nodes.append((node.name, node.op_type, weight[: -len(".weight")] if weight else None))
    return nodes


def run_onnx(path: Path, samples: list[dict[str, np.ndarray]], names: list[str]) -> list[np.ndarray]:
    """Run ``path`` with the agent's onnxruntime runner (one thread) over the samples."""
    from edgeship.runtimes.onnx import OnnxRunner

    runner = OnnxRunner(path, names, threads=1)
    collected = [runner.run(sample) for sample in samples]
    return [np.concatenate([c[k] for c in collected]) for k in range(len(collected[0]))]


def _has_qdq(path: Path) -> bool:
    from converter.export.onnx_common import count_nodes

    return bool(count_nodes(path).get("DequantizeLinear"))
