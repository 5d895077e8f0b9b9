"""The float16 and dynamic int8 ``tflite-*`` variants: one ai-edge-quantizer recipe each, no
calibration.

* ``tflite-fp16``: float16 weights (FLOAT_CASTING, weight-only), dequantized to float32 for
  compute.
* ``tflite-int8-dynamic``: int8 per-channel weights; the kernels quantize float activations at
  run time; the sensitive ops optionally left in float.

``tflite-int8`` (full integer, calibrated) is in :mod:`converter.export.tflite_static`; the
helpers both use are in :mod:`converter.export.tflite_common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.tflite_common import keep_float, quantized_facts, quantizer_errors, write_quantized

#: what the weight-only and dynamic recipes quantize, named when they find none of it.
_WEIGHTS = "weights (conv, fully connected, embedding)"


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
    """int8 per-channel weights; float activations quantized by the kernels at run time.

    Option ``float_layers``: ops left in float, named by their output tensors (what the tuner
    picks by sensitivity, :mod:`converter.tuning.tflite_layers`).
    """
    float_layers = [str(name) for name in request.options.get("float_layers") or ()]
    with quantizer_errors(request):
        q = dynamic_quantizer(base)
        keep_float(q, float_layers)  # added last: later recipe entries win
        write_quantized(q, out)
        steps = ["quant:dynamic:int8:per-channel"]
        if float_layers:
            steps.append(f"keep-float:{len(float_layers)}-layers")
        return BuiltVariant(
            out, request.kind.precision, steps,
            details={**quantized_facts(out, "int8", _WEIGHTS), "float_layers": float_layers},
        )


def dynamic_quantizer(base: Path, regex: str = ".*") -> Any:
    """ai-edge-quantizer with the dynamic int8 recipe on the ops whose names match ``regex``."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(str(base))
    q.add_dynamic_config(regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8)
    return q
