"""ai-edge-quantizer recipes for the TFLite variants (called by :mod:`converter.export.tflite`).

Full-integer models (``tflite-int8``): the static recipe quantizes weights (int8, symmetric,
per output channel) and activations (int8, asymmetric, per tensor) from calibration. Left to
itself, ai-edge-quantizer also turns the model's float inputs and outputs into int8 tensors;
with ``integer_io=False`` (the default) the virtual INPUT/OUTPUT ops are set to
``NO_QUANTIZE`` so the model keeps float32 inputs/outputs and carries QUANTIZE/DEQUANTIZE ops
at its boundary. Integer inputs (token ids) are never quantized. Whenever an input or output
tensor is int8, :class:`BuiltVariant.io` records its scale and zero point so a device can feed
it: ``q = clamp(round(x / scale) + zero_point, -128, 127)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.quiet import hidden_progress_bars


def _quantize(quantizer: Any, out: Path, calibration: Any = None) -> None:
    """Run the quantizer and write the model to ``out``."""
    with hidden_progress_bars():  # tensor transformations still draw a bar
        result = quantizer.quantize(
            calibration, enable_progress_bar=False, enable_progress_report=False
        )
    out.write_bytes(bytes(result.quantized_model))


def _facts(out: Path, expect_dtype: str, what: str) -> dict[str, Any]:
    """Report facts; :class:`NotApplicable` when no tensor of ``expect_dtype`` was produced."""
    from converter.export.tflite import model_facts

    facts = model_facts(out)
    if not facts["tensor_dtypes"].get(expect_dtype):
        out.unlink(missing_ok=True)
        raise NotApplicable(f"no {what} in this model that ai-edge-quantizer can quantize")
    return facts


def build_fp16(request: VariantRequest, base: Path, out: Path, ctx: ExportContext) -> BuiltVariant:
    """float16 weights (FLOAT_CASTING, weight-only), dequantized to float32 for compute."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(str(base))
    q.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    _quantize(q, out)
    return BuiltVariant(
        out, request.kind.precision, ["quant:weight-only:fp16"],
        details=_facts(out, "float16", "weights (conv, fully connected, embedding)"),
    )


def build_int8_dynamic(
    request: VariantRequest, base: Path, out: Path, ctx: ExportContext
) -> BuiltVariant:
    """int8 per-channel weights; float activations quantized by the kernels at run time."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(str(base))
    q.add_dynamic_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8
    )
    _quantize(q, out)
    return BuiltVariant(
        out, request.kind.precision, ["quant:dynamic:int8:per-channel"],
        details=_facts(out, "int8", "weights (conv, fully connected, embedding)"),
    )


def build_int8_static(
    request: VariantRequest, base: Path, out: Path, ctx: ExportContext
) -> BuiltVariant:
    """Full-integer int8 from calibration on ``ctx.calibration()``.

    Options:
        integer_io: ``True`` makes float inputs/outputs int8 tensors (recorded in ``io``);
            ``False`` keeps them float32 with QUANTIZE/DEQUANTIZE inside the model.
    """
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    integer_io = request.options.get("integer_io", False)
    if not isinstance(integer_io, bool):
        raise VariantBuildError(f"{request.id}: option integer_io must be true or false")
    q = quantizer.Quantizer(str(base))
    q.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
    )
    if not integer_io:
        for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            q.update_quantization_recipe(
                regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE
            )
    dataset = CalibrationSet(base, ctx)
    ctx.progress.say(f"{request.id}: calibrating on {ctx.calibration_count} samples")
    with warnings.catch_warnings(), hidden_progress_bars():  # it keeps all tensors on purpose
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        stats = q.calibrate({dataset.key: dataset}, num_threads=min(4, os.cpu_count() or 1))
        if not stats:
            raise VariantBuildError(f"{request.id}: calibration produced no tensor ranges")
        _quantize(q, out, stats)
    details = _facts(out, "int8", "weights or activations")
    details.update(calibration_samples=dataset.seen, integer_io=integer_io)
    return BuiltVariant(
        out, request.kind.precision, ["quant:static:int8:per-channel"],
        io=io_block(out, ctx), details=details,
    )


class CalibrationSet:
    """Calibration samples keyed by the TFLite signature's input names, re-iterable.

    ai-edge-quantizer walks the dataset twice (once to count it), so each iteration draws a
    fresh iterator from ``ctx.calibration()``. Our names map to ``args_N`` by position; arrays
    are cast to the tensor dtype (int64 token ids to int32).

    Attributes:
        key: the signature key samples are for.
        seen: samples yielded by the last full pass.
    """

    def __init__(self, base: Path, ctx: ExportContext) -> None:
        from converter.export.tflite import load_interpreter
        from edge_agent.runtimes.litert import signature_io, signature_key

        interpreter = load_interpreter(base)
        self.key = signature_key(interpreter) or "serving_default"
        inputs, _ = signature_io(interpreter)
        self._ctx = ctx
        self._feeds = [
            (spec.name, d["signature_name"], np.dtype(d["dtype"]))
            for spec, d in zip(ctx.inputs, inputs, strict=True)
        ]
        self._passes = 0
        self.seen = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self._passes += 1
        samples = self._ctx.calibration()
        if self._passes > 1:  # the counting pass stays quiet
            count = self._ctx.calibration_count
            samples = self._ctx.progress.iterate(samples, "calibrating", count)
        self.seen = 0
        for sample in samples:
            self.seen += 1
            yield {sig: np.asarray(sample[ours]).astype(dtype) for ours, sig, dtype in self._feeds}


def io_block(path: Path, ctx: ExportContext) -> dict[str, list[dict[str, Any]]] | None:
    """Scale and zero point per input/output when any of them is an integer-quantized tensor.

    Every input and output is listed (in order, under our names); ``scale`` and
    ``zero_point`` are ``None`` for tensors that are not quantized (float, token ids).

    Returns:
        The manifest ``io`` block, or ``None`` when the model takes and returns plain tensors.
    """
    from converter.export.tflite import load_interpreter
    from edge_agent.runtimes.litert import signature_io, tensor_quantization

    inputs, outputs = signature_io(load_interpreter(path))
    input_names = [s.name for s in ctx.inputs]
    output_names = [s.name for s in ctx.outputs] or [d["signature_name"] for d in outputs]
    block = {
        "inputs": [_io_entry(n, d) for n, d in zip(input_names, inputs, strict=False)],
        "outputs": [_io_entry(n, d) for n, d in zip(output_names, outputs, strict=False)],
    }
    quantized = any(tensor_quantization(d) for d in [*inputs, *outputs])
    return block if quantized else None


def _io_entry(name: str, detail: dict[str, Any]) -> dict[str, Any]:
    from edge_agent.runtimes.litert import tensor_quantization

    quant = tensor_quantization(detail)
    return {
        "name": name,
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": quant[0] if quant else None,
        "zero_point": quant[1] if quant else None,
    }
