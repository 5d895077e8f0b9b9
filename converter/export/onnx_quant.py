"""The float16 and int8 ``onnx-*`` variants, built from the base export with onnxruntime tools.

* ``onnx-fp16``: ``onnxruntime.transformers.float16`` casts weights and compute to float16,
  keeping float32 inputs/outputs.
* ``onnx-int8-dynamic``: ``quant_pre_process`` then ``quantize_dynamic`` (int8 per-channel
  weights, activations quantized at run time), the sensitive MatMuls optionally left in float.
``onnx-int8-static`` is in :mod:`converter.export.onnx_static` and ``onnx-int8-weights`` in
:mod:`converter.export.onnx_weights`; the helpers all of them use (pre-processing, run check,
details, error wrapping) are in :mod:`converter.export.onnx_common`.
"""

from __future__ import annotations

from pathlib import Path

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.onnx_common import (
    built_variant,
    check_runs,
    dynamic_source,
    quiet_ort,
    require_quantized,
    toolchain_step,
)

# --------------------------------------------------------------------------- fp16


def build_fp16(request: VariantRequest, base: Path, ctx: ExportContext, out: Path) -> BuiltVariant:
    """Float16 weights and compute; float32 inputs/outputs when ``keep_io_types`` (default)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep_io = bool(request.options.get("keep_io_types", True))
    with toolchain_step(request, "float16 conversion"), quiet_ort():
        model = convert_float_to_float16(onnx.load(str(base)), keep_io_types=keep_io)
        onnx.save(model, str(out))
    check_runs(request, out, ctx)
    return built_variant(request, out, base, ["cast:fp16"], keep_io_types=keep_io)


# --------------------------------------------------------------------------- int8 dynamic


def build_int8_dynamic(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """int8 weights, activations quantized at run time (``quantize_dynamic``).

    All the op types onnxruntime quantizes dynamically are included: MatMul (and Gemm, rewritten
    as MatMul) become ``MatMulInteger``, Conv ``ConvInteger`` and embedding tables int8 +
    DequantizeLinear. ``ConvInteger`` makes CNN files smaller but ~5x slower than float Conv on
    x86 CPU; ``onnx-int8-static`` is the CNN variant, this one the transformer's.
    Options: ``per_channel`` (weights, default on), ``reduce_range`` (7-bit weights, default
    on: x86 CPUs without VNNI saturate with 8-bit ones; docs/formats-onnx.md), ``float_layers``
    (node names left in float; the tuner picks them by sensitivity).

    Raises:
        VariantBuildError: ``float_layers`` names a node the graph does not have.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_channel = bool(request.options.get("per_channel", True))
    reduce_range = bool(request.options.get("reduce_range", True))
    float_layers = [str(name) for name in request.options.get("float_layers") or ()]
    source = dynamic_source(base, ctx)
    _check_nodes(request, source, float_layers)
    with toolchain_step(request, "quantize_dynamic"), quiet_ort():
        quantize_dynamic(source, out, per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=float_layers)
    require_quantized(request, out, "no MatMul, Gemm, Conv or Gather weights to quantize")
    check_runs(request, out, ctx)
    granularity = "per-channel" if per_channel else "per-tensor"
    steps = [f"quant:dynamic:{granularity}"]
    if float_layers:
        steps.append(f"keep-float:{len(float_layers)}-layers")
    return built_variant(request, out, base, steps, weight_type="int8", reduce_range=reduce_range,
                         float_layers=float_layers)


def _check_nodes(request: VariantRequest, source: Path, names: list[str]) -> None:
    import onnx

    known = {node.name for node in onnx.load(str(source), load_external_data=False).graph.node}
    unknown = sorted(set(names) - known)
    if unknown:
        raise VariantBuildError(f"{request.id}: float_layers names no node of the graph: {unknown[:5]}")
