"""Which ops of a TFLite int8 kind store their weights per tensor: the per-layer choice of
:mod:`converter.tuning.granularity`, measured once on the model's ONNX export and mapped to
TFLite ops by PyTorch module. Both ``tflite-int8`` and ``tflite-int8-dynamic`` take it (8-bit
weights, rounded alike; the measurement keeps activations float, which is what the dynamic
kind's kernels start from), so a conversion measures it at most once.

Per-channel weights cost 12 bytes per output channel (a float scale and an int64 zero point).
``granularity_min_share`` skips the measurement where the bytes per tensor could save are a
small share of the int8 weights: for the dynamic kind's CONV_2D and FULLY_CONNECTED, 1.1% on
a MiniLM-L6 encoder (wide MatMuls; measuring its 36 layers would cost tens of seconds) and
1.4% on the ResNet-style CNN, against 5.4% on the MobileNetV2-style CNN and 7.3% on the
digits CNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import ExportContext, VariantRequest

#: bytes per output channel of a per-channel int8 weight in TFLite (float32 scale, int64 zero point).
CHANNEL_BYTES = 12
#: the axis ai-edge-quantizer keeps per channel, by op (of the weight, the op's second input).
_CHANNEL_AXIS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3, "TRANSPOSE_CONV": 0,
                 "EMBEDDING_LOOKUP": 0, "BATCH_MATMUL": -1}


def per_tensor_scopes(request: VariantRequest, base: Path, ctx: ExportContext, fixed: set[str],
                      ops: frozenset[str] | None = None) -> tuple[list[str], dict[str, Any] | None]:
    """The op scopes (output tensor names) of ``base`` whose weights go per tensor, and the
    report's summary; ``([], None)`` when every weight stays per channel (not asked, not
    worth measuring, or no ONNX to measure on). ``fixed``: ops kept float, never listed;
    ``ops``: the op types that may go per tensor (every weighted op by default).

    Options read: ``per_tensor_layers`` (``"auto"`` or PyTorch modules),
    ``granularity_tolerance`` and ``granularity_min_share``.
    """
    from converter.export.tflite_ops import WEIGHTED_OPS, computing_ops, module_of_scope, resolve_module
    from converter.tuning.granularity import granularity_options

    chosen, tolerance = granularity_options(request.options, request.id)
    if not chosen:
        return [], None
    if chosen == "auto":
        least = request.options.get("granularity_min_share", 0.0)
        if isinstance(least, bool) or not isinstance(least, int | float) or not 0 <= least <= 1:
            raise VariantBuildError(f"{request.id}: granularity_min_share must be a number in "
                                    f"[0, 1], got {least!r}")
        key = ("per-channel-share", str(base), ops)  # parsing a 90 MB model: ~1 s a build
        if key not in ctx.cache:
            ctx.cache[key] = per_channel_share(base, ops or WEIGHTED_OPS)
        share = ctx.cache[key]
        if share < least:
            return [], {"per_tensor_layers": 0, "skipped": f"per tensor could save {share:.1%} "
                        f"of the int8 weights, under granularity_min_share ({least:.0%})"}
        found = _onnx_granularity(ctx, tolerance)
        if found is None:
            return [], None
        modules, summary = set(found.modules), found.summary()
    else:
        modules = set(chosen)
        summary = {"per_tensor_layers": len(modules), "per_tensor": sorted(modules)}
    scopes = [scope for scope, op in computing_ops(base) if op in (ops or WEIGHTED_OPS) and scope not in fixed
              and resolve_module(ctx.model, module_of_scope(scope)) in modules]
    return scopes, {**summary, "tflite_ops_per_tensor": len(scopes)}


def per_channel_share(base: Path, ops: frozenset[str] | set[str]) -> float:
    """Bytes the per-channel scales of ``base``'s ``ops`` take, as a share of all its int8
    weights (constant weights only): what per-tensor weights could save at most."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(base.read_bytes())
    graph = model.subgraphs[0]
    weights = channels = 0
    for op in graph.operators:
        code = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        if code is None or code.name not in _CHANNEL_AXIS or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        tensor = graph.tensors[op.inputs[1]]
        if model.buffers[tensor.buffer].data is None or tensor.shape is None:
            continue  # an activation (a MatMul of two inputs): nothing stored
        weights += int(np.prod(tensor.shape))
        if code.name in ops:
            channels += int(tensor.shape[_CHANNEL_AXIS[code.name]])
    return CHANNEL_BYTES * channels / weights if weights else 0.0


def _onnx_granularity(ctx: ExportContext, tolerance: float) -> Any:
    """The granularity choice for 8-bit weights, measured on the model's ONNX export (exported
    here when no ONNX variant made it); ``None`` without ONNX (weights stay per channel)."""
    from converter.tuning.granularity import granularity_for

    key = ("weight-granularity-onnx-source",)
    if key not in ctx.cache:
        try:
            from converter.export.onnx import BASE_DIR, export_base
            from converter.export.onnx_static import static_source

            base = ctx.work_dir / BASE_DIR / "base.onnx"
            ctx.cache[key] = static_source(base if base.exists() else export_base(ctx), ctx)
        except Exception:  # no ONNX toolchain or export: TFLite weights stay per channel
            ctx.cache[key] = None
    if ctx.cache[key] is None:
        return None
    return granularity_for(ctx.cache[key], ctx, False, tolerance)
