"""The float16 and dynamic int8 ``tflite-*`` variants: one ai-edge-quantizer recipe each, no
calibration.

* ``tflite-fp16``: float16 weights (FLOAT_CASTING, weight-only), dequantized to float32 for
  compute.
* ``tflite-int8-dynamic``: int8 weights, per channel or per tensor chosen per layer
  (:mod:`converter.export.tflite_granularity`); the kernels quantize float activations at run
  time; the sensitive ops optionally left in float.

``tflite-int8`` (full integer, calibrated) is in :mod:`converter.export.tflite_static`; the
helpers both use are in :mod:`converter.export.tflite_common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.tflite_common import (
    keep_float,
    quantized_facts,
    quantizer_errors,
    scope_regex,
    write_quantized,
)

#: what the weight-only and dynamic recipes quantize, named when they find none of it.
_WEIGHTS = "weights (conv, fully connected, embedding)"
#: ops whose dynamic-range (hybrid) LiteRT kernels take per-tensor weights. Not
#: DEPTHWISE_CONV_2D: its hybrid kernel reads one scale per channel (per tensor, the
#: MobileNetV2-style CNN fell to 10% accuracy, measured on ai-edge-litert 2.3).
DYNAMIC_PER_TENSOR_OPS = frozenset({"CONV_2D", "FULLY_CONNECTED"})


def build_fp16(request: VariantRequest, base: Path, ctx: ExportContext, out: Path) -> BuiltVariant:
    """float16 weights (FLOAT_CASTING, weight-only), dequantized to float32 for compute."""
    with quantizer_errors(request):  # the imports too: a missing quantizer fails this variant
        from ai_edge_quantizer import qtyping, quantizer
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        q = quantizer.Quantizer(str(base))
        q.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        write_quantized(q, out)
        return BuiltVariant(
            out, request.kind.precision, ["quant:weight-only:fp16"],
            details=quantized_facts(out, "float16", _WEIGHTS),
        )


def build_int8_dynamic(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """int8 weights per channel, or per tensor where that costs nothing measurable; float
    activations quantized by the kernels at run time; internal tensor names shortened.

    Options: ``float_layers`` (ops left in float, named by their output tensors: what the
    tuner picks by sensitivity, :mod:`converter.tuning.tflite_layers`), ``per_tensor_layers``,
    ``granularity_tolerance``, ``granularity_min_share``
    (:mod:`converter.export.tflite_granularity`) and ``compact``.
    """
    from converter.export.tflite_compact import short_tensor_names
    from converter.export.tflite_granularity import per_tensor_scopes

    float_layers = [str(name) for name in request.options.get("float_layers") or ()]
    with quantizer_errors(request):
        q = dynamic_quantizer(base)
        scopes, granularity = per_tensor_scopes(request, base, ctx, set(float_layers),
                                                 DYNAMIC_PER_TENSOR_OPS)
        if scopes:
            _add_dynamic(q, scope_regex(scopes), per_channel=False)
        keep_float(q, float_layers)  # added last: later recipe entries win
        write_quantized(q, out)
        saved = short_tensor_names(out) if _compact(request) else 0
        steps = [f"quant:dynamic:int8:{'per-layer' if scopes else 'per-channel'}"]
        if float_layers:
            steps.append(f"keep-float:{len(float_layers)}-layers")
        return BuiltVariant(
            out, request.kind.precision, steps,
            details={**quantized_facts(out, "int8", _WEIGHTS), "float_layers": float_layers,
                     "weight_granularity": granularity, "compacted": {"bytes_saved": saved}},
        )


def dynamic_quantizer(base: Path, regex: str = ".*") -> Any:
    """ai-edge-quantizer with the dynamic int8 recipe on the ops whose names match ``regex``."""
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(base))
    _add_dynamic(q, regex, per_channel=True)
    return q


def _add_dynamic(q: Any, regex: str, per_channel: bool) -> None:
    from ai_edge_quantizer import qtyping

    granularity = qtyping.QuantGranularity.CHANNELWISE if per_channel else qtyping.QuantGranularity.TENSORWISE
    q.add_dynamic_config(regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                         num_bits=8, granularity=granularity)


def _compact(request: VariantRequest) -> bool:
    value = request.options.get("compact", True)
    if not isinstance(value, bool):
        raise VariantBuildError(f"{request.id}: option compact must be true or false")
    return value
