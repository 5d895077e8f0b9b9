"""The catalogue of variant kinds: one table drives conversion, the default recipe, docs and tests.

Each kind names its export format, the precision it ships in, the builder that makes it, the
runtime that validates it and the options a recipe may set (with their defaults). Builders are
named, not imported (``module:function``), so reading the catalogue loads no toolchain;
:mod:`converter.export.dispatch` imports and calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class VariantKind:
    """One kind of variant the converter can build.

    Attributes:
        kind: catalogue key, also the default variant id (``onnx-int8-static``).
        format: ``onnx``, ``tflite``, ``coreml``, ``openvino``, ...
        precision: manifest precision (``fp32``, ``fp16``, ``int8``, ``int8-dynamic``, ...).
        backend: the format's module under ``converter.export``: it exports the base model
            (``export_base``) the builders start from.
        builder: ``module:function`` of the :class:`~converter.export.base.Builder` that
            builds this kind from the base export.
        runtime: runtime that executes it on a device (``onnxruntime``, ``litert``, ``coreml``,
            ``openvino``, ...).
        options: recipe options this kind accepts, with their defaults.
        summary: one line for docs and ``edgeship variants``.
        opt_in: left out of the default recipe (built only when a recipe names it): the kind
            needs a choice only the user can make (e.g. a budget).
    """

    kind: str
    format: str
    precision: str
    backend: str
    builder: str
    runtime: str
    options: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    summary: str = ""
    opt_in: bool = False


def _kind(
    kind: str, fmt: str, precision: str, runtime: str, builder: str, summary: str, *,
    opt_in: bool = False, **options: Any,
) -> VariantKind:
    """A kind whose ``builder`` is ``module:function`` relative to ``converter.export``."""
    return VariantKind(
        kind=kind,
        format=fmt,
        precision=precision,
        backend=f"converter.export.{fmt}",
        builder=f"converter.export.{builder}",
        runtime=runtime,
        options=MappingProxyType(options),
        summary=summary,
        opt_in=opt_in,
    )


_ORT, _LITERT, _COREML = "onnxruntime", "litert", "coreml"

VARIANT_KINDS: MappingProxyType = MappingProxyType(
    {
        k.kind: k
        for k in (
            _kind("onnx-fp32", "onnx", "fp32", _ORT, "onnx:build_fp32", "ONNX export, float32",
                  opset=18),
            _kind(
                "onnx-fp16", "onnx", "fp16", _ORT, "onnx_quant:build_fp16",
                "float16 weights and compute, float32 inputs/outputs", keep_io_types=True,
            ),
            _kind(
                "onnx-int8-dynamic", "onnx", "int8-dynamic", _ORT, "onnx_quant:build_int8_dynamic",
                "int8 per-channel weights, activations quantized at run time (quantize_dynamic); "
                "sensitive MatMuls kept in float by tuning",
                per_channel=True, reduce_range=True, float_layers=(),
            ),
            _kind(
                "onnx-int8-static", "onnx", "int8", _ORT, "onnx_static:build_int8_static",
                "QDQ int8 weights and activations from calibration (quantize_static)",
                calibration="minmax", per_channel=True, percentile=99.999,
                activation_type="uint8", reduce_range=True, float_layers=(),
                per_tensor_layers="auto", granularity_tolerance=0.25, compact=True,
            ),
            _kind(
                "onnx-int8-weights", "onnx", "int8-weights", _ORT, "onnx_weights:build_int8_weights",
                "weight-only int8: blockwise MatMul weights and embedding tables, float activations",
                block_size=32, quantize_embeddings=True,
            ),
            _kind(
                "onnx-int4-weights", "onnx", "int4-weights", _ORT, "onnx_int4:build_int4_weights",
                "blockwise int4 MatMul weights (MatMulNBits), int8 embedding tables, float "
                "activations", block_size=32, symmetric=True, embedding_bits=8, accuracy_level=0,
            ),
            _kind(
                "onnx-mixed", "onnx", "mixed", _ORT, "onnx_mixed:build_mixed",
                "fp32 / fp16 / int8 per MatMul layer under a size or p50 budget, chosen from "
                "measured per-layer sensitivity", opt_in=True,
                budget={"size_ratio": 0.5}, candidates=6, reduce_range=True,
            ),
            _kind(
                "onnx-ternary-packed", "onnx", "ternary-2bit-packed", _ORT,
                "onnx_packed:build_ternary_packed",
                "after a 'ternary' step: ternary weights shipped 2 bits each + a float32 scale per "
                "channel, unpacked to float32 at load", opt_in=True, min_elements=64,
            ),
            _kind("tflite-fp32", "tflite", "fp32", _LITERT, "tflite:build_fp32",
                  "litert-torch export, float32"),
            _kind(
                "tflite-fp16", "tflite", "fp16", _LITERT, "tflite_quant:build_fp16",
                "float16 weights (ai-edge-quantizer FLOAT_CASTING), float compute",
            ),
            _kind(
                "tflite-int8-dynamic", "tflite", "int8-dynamic", _LITERT, "tflite_quant:build_int8_dynamic",
                "int8 weights, dynamic-range activations (ai-edge-quantizer); sensitive ops kept "
                "in float by tuning",
                float_layers=(), per_tensor_layers="auto", granularity_tolerance=0.25,
                granularity_min_share=0.03, compact=True,
            ),
            _kind(
                "tflite-int8", "tflite", "int8", _LITERT, "tflite_static:build_int8_static",
                "full-integer int8 from calibration (ai-edge-quantizer static)",
                integer_io=False, float_output_layer=True, calibration="minmax", per_channel=True,
                float_layers=(), per_tensor_layers="auto", granularity_tolerance=0.25, compact=True,
            ),
            _kind(
                "tflite-int4-weights", "tflite", "int4-weights", _LITERT, "tflite_int4:build_int4_weights",
                "blockwise int4 fully connected and embedding weights (ai-edge-quantizer), "
                "activations quantized at run time", block_size=32,
            ),
            _kind(
                "tflite-mixed", "tflite", "mixed", _LITERT, "tflite_mixed:build_mixed",
                "fp32 / fp16 / int8 per weighted op under a size or p50 budget, chosen from "
                "measured per-op sensitivity", opt_in=True, budget={"size_ratio": 0.5}, candidates=6,
            ),
            _kind(
                "coreml-fp16", "coreml", "fp16", _COREML, "coreml:build_fp16",
                "ML Program, float16 compute precision",
            ),
            _kind(
                "coreml-int8-weights", "coreml", "int8-weights", _COREML, "coreml:build_int8_weights",
                "ML Program, linear int8 weights (coremltools.optimize)",
                granularity="per_channel",
            ),
            _kind(
                "coreml-palettized-4bit", "coreml", "palettized-4bit", _COREML, "coreml:build_palettized",
                "ML Program, 4-bit k-means palettized weights (coremltools.optimize)",
                nbits=4, mode="kmeans",
            ),
            _kind(
                "coreml-palettized-2bit", "coreml", "palettized-2bit", _COREML,
                "coreml:build_palettized",
                "ML Program, 2-bit palettes, one LUT per output channel (exact for 'ternary' "
                "weights); iOS18", opt_in=True, nbits=2, mode="kmeans",
                granularity="per_grouped_channel", group_size=1,
            ),
            _kind(
                "openvino-fp16", "openvino", "fp16", "openvino", "openvino:build_fp16",
                "OpenVINO IR (openvino.convert_model), float16 weights, float32 compute", opt_in=True,
            ),
            _kind(
                "openvino-int8", "openvino", "int8", "openvino", "openvino_int8:build_int8",
                "OpenVINO IR, NNCF post-training int8 (nncf.quantize); NNCF accuracy control "
                "when tuning", opt_in=True, calibration="default", per_channel=True, preset="performance",
                float_layers=(), accuracy_control=False, max_drop=0.01, control_metric="top1",
            ),
            _kind("mnn-fp32", "mnn", "fp32", "mnn", "mnn:build_fp32",
                  "MNNConvert of the ONNX export, float32", opt_in=True),
            _kind(
                "mnn-int8", "mnn", "int8-weights", "mnn", "mnn:build_int8",
                "MNNConvert weight quantization: int8 Conv/MatMul weights, float activations",
                opt_in=True, block_size=0, asymmetric=False,
            ),
            _kind("executorch-xnnpack-fp32", "executorch", "fp32", "executorch", "executorch:build_fp32",
                  "ExecuTorch .pte lowered to XNNPACK, float32", opt_in=True),
            _kind(
                "executorch-xnnpack-int8", "executorch", "int8", "executorch", "executorch:build_int8",
                "ExecuTorch .pte, XNNPACKQuantizer PT2E int8 weights and activations, lowered to "
                "XNNPACK", opt_in=True, per_channel=True,
            ),
        )
    }
)

FORMATS: tuple[str, ...] = ("onnx", "tflite", "coreml", "openvino", "mnn", "executorch")
