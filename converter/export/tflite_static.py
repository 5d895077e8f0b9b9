"""``tflite-int8``: full-integer int8 from calibration, with ai-edge-quantizer's static recipe.

The static recipe quantizes weights (int8, symmetric, per output channel, or per tensor in the
layers where that costs nothing measurable: :mod:`converter.export.tflite_granularity`) and activations
(int8, asymmetric, per tensor) from calibration. Left to itself, ai-edge-quantizer also turns
the model's float inputs and outputs into int8 tensors; with ``integer_io=False`` (the
default) the virtual INPUT/OUTPUT ops are set to ``NO_QUANTIZE`` so the model keeps float32
inputs/outputs and carries QUANTIZE/DEQUANTIZE ops at its boundary. Integer inputs (token ids)
are never quantized. Whenever an input or output tensor is int8, :class:`BuiltVariant.io`
records its scale and zero point so a device can feed it:
``q = clamp(round(x / scale) + zero_point, -128, 127)``.

Activation ranges are the min/max over all calibration samples (``calibration = "minmax"``).
ai-edge-quantizer's own default is an exponential moving average (factor 0.95) of each
sample's min and max, which ends up near a typical sample's range rather than the extremes:
it clipped ~10% of the digits CNN's logits (max abs error 8.2, against 0.46 with min/max).
With float outputs, the ops that produce the model outputs are also left in float
(``float_output_layer = true``) so the outputs are not clipped to the calibrated range.

``tflite-fp16`` and ``tflite-int8-dynamic`` (no calibration) are in
:mod:`converter.export.tflite_quant`. The tuner's per-layer sensitivity
(:mod:`converter.tuning.tflite_layers`) reuses the recipe and the cached ranges built here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.tflite_common import (
    keep_float,
    load_interpreter,
    quantized_facts,
    quantizer_errors,
    scope_regex,
    write_quantized,
)
from converter.export.tflite_compact import short_tensor_names
from converter.quiet import hidden_progress_bars

#: calibration methods of ``tflite-int8``: min/max over all samples, or the quantizer's default.
CALIBRATIONS = ("minmax", "moving-average")
# ops that only move data: the float output layer extends through them to the op computing it
_LAYOUT_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE"}


def build_int8_static(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """Full-integer int8 from calibration on ``ctx.calibration()``.

    Options:
        integer_io: ``True`` makes float inputs/outputs int8 tensors (recorded in ``io``);
            ``False`` keeps them float32 with QUANTIZE/DEQUANTIZE inside the model.
        float_output_layer: ``True`` keeps the ops that produce the model outputs (and the
            reshapes between them and the outputs) in float, fed by a DEQUANTIZE, so outputs
            are not clipped to the calibrated range. Ignored with ``integer_io = true``: int8
            outputs come from int8 ops.
        calibration: ``"minmax"`` (range over all samples) or ``"moving-average"``
            (ai-edge-quantizer's default: moving average of per-sample min/max).
        per_channel: int8 weights per output channel (``True``) or per tensor.
        float_layers: ops kept in float, named by their output tensors (ai-edge-quantizer's
            op scope); the accuracy-aware tuner fills it with the most sensitive ops.

    Calibration results are kept in ``ctx.cache`` per base model and settings, so tuning
    attempts on the same model calibrate once.
    """
    with quantizer_errors(request):
        q, settings = static_quantizer(request, base)
        float_layers, extra_float = settings["float_output_tensors"], settings["float_layers"]
        stats, seen = calibration_stats(q, base, ctx, request.id, settings["calibration"],
                                        settings["calibration_key"])
        # after calibration (the cached ranges cover every op), before the float rules win
        granularity = _per_tensor_ops(request, q, base, ctx, settings)
        keep_float(q, [*float_layers, *extra_float])
        with warnings.catch_warnings(), hidden_progress_bars():
            write_quantized(q, out, stats)
        names_saved = short_tensor_names(out) if _bool_option(request, "compact", True) else 0
        details = quantized_facts(out, "int8", "weights or activations")
        details.update(calibration_samples=seen, weight_granularity=granularity,
                       compacted={"bytes_saved": names_saved},
                       **{k: v for k, v in settings.items() if k != "calibration_key"})
        label = "per-channel" if settings["per_channel"] else "per-tensor"
        if granularity and granularity.get("tflite_ops_per_tensor"):
            label = "per-layer"
        steps = [f"quant:static:int8:{label}"]
        if float_layers:
            steps.append("keep-float:output-layer")
        if extra_float:
            steps.append(f"keep-float:{len(extra_float)}-layers")
        return BuiltVariant(
            out, request.kind.precision, steps, io=io_block(out, ctx), details=details,
        )


def static_quantizer(request: VariantRequest, base: Path) -> tuple[Any, dict[str, Any]]:
    """The ai-edge-quantizer ``Quantizer`` with the static int8 recipe of ``request`` (output
    layers kept float when asked, ``float_layers`` not applied yet) and its settings.

    Raises:
        VariantBuildError: a bad option value.
    """
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    integer_io = _bool_option(request, "integer_io", False)
    float_output_layer = _bool_option(request, "float_output_layer", True) and not integer_io
    calibration = request.options.get("calibration", "minmax")
    if calibration not in CALIBRATIONS:
        raise VariantBuildError(
            f"{request.id}: option calibration must be one of {', '.join(CALIBRATIONS)}"
        )
    per_channel = _bool_option(request, "per_channel", True)
    q = quantizer.Quantizer(str(base))
    q.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
        weight_granularity=weight_granularity(per_channel),
    )
    if not integer_io:
        for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            q.update_quantization_recipe(
                regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE
            )
    float_layers = output_layer_scopes(base) if float_output_layer else []
    keep_float(q, float_layers)  # added last: later recipe entries win
    return q, {
        "calibration": calibration, "integer_io": integer_io, "per_channel": per_channel,
        "float_output_layer": bool(float_layers), "float_output_tensors": float_layers,
        "float_layers": [str(name) for name in request.options.get("float_layers") or ()],
        "calibration_key": (integer_io, tuple(float_layers), per_channel),
    }


def _per_tensor_ops(request: VariantRequest, q: Any, base: Path, ctx: ExportContext,
                    settings: dict[str, Any]) -> dict[str, Any] | None:
    """With per-channel weights, store the ops chosen per tensor
    (:func:`converter.export.tflite_granularity.per_tensor_scopes`) with per-tensor weights;
    returns the report's summary."""
    from ai_edge_quantizer import qtyping

    from converter.export.tflite_granularity import per_tensor_scopes

    if not settings["per_channel"]:
        return None
    fixed = set(settings["float_output_tensors"]) | set(settings["float_layers"])
    scopes, summary = per_tensor_scopes(request, base, ctx, fixed)
    if scopes:
        q.add_static_config(
            regex=scope_regex(scopes), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            activation_num_bits=8, weight_num_bits=8, weight_granularity=weight_granularity(False),
        )
    return summary


def weight_granularity(per_channel: bool) -> Any:
    from ai_edge_quantizer import qtyping

    granularity = qtyping.QuantGranularity
    return granularity.CHANNELWISE if per_channel else granularity.TENSORWISE


def calibration_stats(
    quantizer: Any, base: Path, ctx: ExportContext, variant_id: str, method: str, key: tuple
) -> tuple[dict, int]:
    """Activation ranges for ``quantizer``'s recipe, computed once per base model, method and
    ``key`` (the settings that change which tensors are calibrated) and kept in ``ctx.cache``.

    Returns:
        ``(ranges, calibration samples seen)``.

    Raises:
        VariantBuildError: calibration produced no ranges.
    """
    cache_key = ("tflite-calibration", str(base), method, key)
    if cache_key not in ctx.cache:
        dataset = CalibrationSet(base, ctx)
        ctx.progress.say(f"{variant_id}: calibrating on {ctx.calibration_count} samples")
        with warnings.catch_warnings(), hidden_progress_bars():  # it keeps all tensors on purpose
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            stats = _calibrate(quantizer, base, {dataset.key: dataset}, method)
        if not stats:
            raise VariantBuildError(f"{variant_id}: calibration produced no tensor ranges")
        ctx.cache[cache_key] = (stats, dataset.seen)
    return ctx.cache[cache_key]


def _bool_option(request: VariantRequest, name: str, default: bool) -> bool:
    value = request.options.get(name, default)
    if not isinstance(value, bool):
        raise VariantBuildError(f"{request.id}: option {name} must be true or false")
    return value


def _calibrate(quantizer: Any, base: Path, data: dict[str, Any], method: str) -> dict:
    """Activation ranges from ``data``: min/max over all samples, or the quantizer's default.

    ``Quantizer.calibrate`` always uses the moving average; min/max needs its ``Calibrator``
    with ``qsv_utils.min_max_update``, driven by the same recipe.
    """
    threads = min(4, os.cpu_count() or 1)
    if method == "moving-average":
        return quantizer.calibrate(data, num_threads=threads)
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    recipe = recipe_manager.RecipeManager()
    recipe.load_quantization_recipe(quantizer.get_quantization_recipe())
    calib = calibrator.Calibrator(
        str(base), num_threads=threads, qsv_update_func=qsv_utils.min_max_update
    )
    calib.calibrate(data, recipe)
    return calib.get_model_qsvs()


def output_layer_scopes(base: Path) -> list[str]:
    """Output tensor names of the ops producing the model outputs (main subgraph).

    ai-edge-quantizer names an op by its output tensors (``"a;b;"``). From each model output
    the walk goes back through layout ops (reshape, transpose, ...) and stops after the first
    op that computes something. An op is kept only when nothing else reads what it writes:
    ai-edge-quantizer 0.10, asked to keep an op in float whose output also feeds an int8 op,
    turns that model output into the int8 tensor it inserts for the other reader (seen on a
    BERT-style model returning its hidden states). Outputs that are model inputs have no
    producer.
    """
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(base.read_bytes())
    graph = model.subgraphs[0]
    ops = list(graph.operators)
    producer = {t: i for i, op in enumerate(ops) for t in op.outputs if t >= 0}
    readers: dict[int, set[int]] = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            readers.setdefault(int(t), set()).add(i)
    kept: set[int] = set()
    todo = [int(t) for t in graph.outputs]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in kept:
            continue
        op = ops[i]
        if any(readers.get(int(t), set()) - kept for t in op.outputs if t >= 0):
            continue
        kept.add(i)
        name = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        if name is not None and name.name in _LAYOUT_OPS and op.inputs[0] >= 0:
            todo.append(int(op.inputs[0]))
    names = [fb.get_tensor_name(graph.tensors[t]) for i in sorted(kept) for t in ops[i].outputs
             if t >= 0]
    return [n for n in names if n]


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
        from edgeship.runtimes.litert import signature_io, signature_key

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
    from edgeship.runtimes.litert import signature_io, tensor_quantization

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
    from edgeship.runtimes.litert import tensor_quantization

    quant = tensor_quantization(detail)
    return {
        "name": name,
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": quant[0] if quant else None,
        "zero_point": quant[1] if quant else None,
    }
