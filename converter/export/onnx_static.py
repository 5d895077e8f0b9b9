"""``onnx-int8-static``: QDQ int8 weights and activations from calibration (``quantize_static``).

``quant_pre_process`` (shape inference, graph optimisation) runs first; the quantizer then
inserts QuantizeLinear/DequantizeLinear pairs around the ops it quantizes, with activation
ranges calibrated on the calibration samples (``minmax``, ``entropy`` or ``percentile``) and
int8 weights per channel or per tensor. Integer inputs (token ids, masks) pass through.

``float_layers`` names nodes of the pre-processed graph to leave in float
(``nodes_to_exclude``): the accuracy-aware tuner (:mod:`converter.tuning`) fills it with the
most sensitive layers when the variant misses its gates. Calibration ranges are cached per
method in the export's work directory, so tuning attempts and sensitivity runs on the same
model calibrate once. With per-channel weights, the layers where per tensor costs nothing
measurable are stored per tensor (``per_tensor_layers = "auto"``,
:mod:`converter.tuning.granularity`), and the file is stored compactly
(:mod:`converter.export.onnx_compact`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.onnx_common import (
    built_variant,
    check_runs,
    preprocess,
    quiet_ort,
    require_quantized,
    runs,
    toolchain_step,
)
from converter.export.onnx_compact import compact_qdq

#: op types quantize_static quantizes in transformer-style graphs (see _static_op_types).
TRANSFORMER_STATIC_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather"})
CALIBRATIONS = ("minmax", "entropy", "percentile")
#: where calibration ranges are cached, under the export context's work directory.
CACHE_DIR = "_onnx_calibration"


def build_int8_static(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """QDQ int8 weights and activations with ranges calibrated on ``ctx.calibration()``.

    Options: ``calibration`` (minmax / entropy / percentile), ``percentile``, ``per_channel``,
    ``activation_type`` (uint8 / int8), ``reduce_range`` (7-bit weights, the default: x86 CPUs
    without VNNI saturate with 8-bit ones; docs/formats-onnx.md), ``float_layers`` (node names
    kept in float), ``per_tensor_layers`` (with per-channel weights: ``"auto"`` chooses by
    measured sensitivity, or a list of weight names), ``granularity_tolerance``, ``compact``.
    """
    method, act, settings = static_settings(request, base)
    float_layers = list(request.options.get("float_layers") or [])
    if float_layers:
        settings["nodes_to_exclude"] = float_layers
    pre = static_source(base, ctx)
    choice = _per_tensor_weights(request, pre, ctx, settings)
    quantize_file(request.id, pre, out, ctx, settings)
    require_quantized(request, out, "quantize_static found nothing to quantize")
    if pre != base and not runs(out, ctx):
        ctx.progress.say(f"{request.id}: result does not load; quantizing without pre-processing")
        quantize_file(request.id, base, out, ctx, settings)
    compacted = compact_qdq(out) if request.options.get("compact", True) else None
    check_runs(request, out, ctx)
    granularity = "per-channel" if settings["per_channel"] else "per-tensor"
    if choice is not None and choice["per_tensor_layers"]:
        granularity = "per-layer"
    op_types = settings["op_types_to_quantize"]
    steps = [f"quant:static:{method}:{granularity}"]
    if float_layers:
        steps.append(f"keep-float:{len(float_layers)}-layers")
    return built_variant(
        request, out, base, steps,
        activation_type=act, weight_type="int8", reduce_range=settings["reduce_range"],
        calibration_samples=ctx.calibration_count,
        op_types="all" if op_types is None else op_types, float_layers=float_layers,
        weight_granularity=choice, compacted=compacted,
    )


def static_source(base: Path, ctx: ExportContext) -> Path:
    """The pre-processed graph ``quantize_static`` reads, made once per base export (cached in
    ``ctx``); the granularity choice names its weights."""
    key = ("onnx-static-source", str(base))
    if key not in ctx.cache or not Path(ctx.cache[key]).exists():
        work = ctx.work_dir / "_onnx_static"
        work.mkdir(parents=True, exist_ok=True)
        ctx.cache[key] = preprocess(base, work, ctx)
    return ctx.cache[key]


def _per_tensor_weights(request: VariantRequest, source: Path, ctx: ExportContext,
                        settings: dict[str, Any]) -> dict[str, Any] | None:
    """Put the weights chosen per tensor into ``settings`` (``TensorQuantOverrides``); returns
    the choice's summary for the report, or ``None`` when every weight has one granularity."""
    from converter.tuning.granularity import granularity_for, granularity_options

    chosen, tolerance = granularity_options(request.options, request.id)
    if not settings["per_channel"] or not chosen:
        return None
    if chosen == "auto":
        found = granularity_for(source, ctx, settings["reduce_range"], tolerance)
        if found is None:
            return None
        weights, summary = found.per_tensor, found.summary()
    else:
        weights = list(chosen)
        summary = {"per_tensor_layers": len(weights), "per_tensor": weights}
    overrides = {name: [{"symmetric": True, "reduce_range": settings["reduce_range"]}]
                 for name in weights}
    if overrides:
        settings["extra_options"] = {**settings["extra_options"], "TensorQuantOverrides": overrides}
    return summary


def static_settings(request: VariantRequest, base: Path) -> tuple[str, str, dict[str, Any]]:
    """``(calibration method, activation type, quantize_static keyword arguments)``.

    Raises:
        VariantBuildError: an unknown calibration method or activation type.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType

    opts = request.options
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    act_types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = str(opts.get("calibration", "minmax"))
    act = str(opts.get("activation_type", "uint8"))
    if method not in methods:
        raise VariantBuildError(f"{request.id}: calibration {method!r} is not one of {list(methods)}")
    if act not in act_types:
        raise VariantBuildError(f"{request.id}: activation_type {act!r} is not uint8 or int8")
    settings = {
        "calibrate_method": methods[method],
        "activation_type": act_types[act],
        "per_channel": bool(opts.get("per_channel", True)),
        "reduce_range": bool(opts.get("reduce_range", True)),
        "op_types_to_quantize": _static_op_types(base),
        "extra_options": {"CalibPercentile": float(opts.get("percentile", 99.999))}
        if method == "percentile" else {},
    }
    return method, act, settings


def quantize_file(
    variant_id: str, source: Path, out: Path, ctx: ExportContext, settings: dict[str, Any],
) -> None:
    """Calibrate (or reuse cached ranges) and run ``quantize_static`` (QDQ, int8 weights), then
    free the graph outputs.

    ``quantize_static`` does not pass histogram sizes to the entropy calibrator, whose
    defaults (128 bins for 128 quantized bins) make it return the min/max range; for
    ``entropy`` the ranges are computed here with 2048 bins and handed over as a cache.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = settings["calibrate_method"]
    cache = calibration_cache(source, ctx, settings)
    reader = None
    if not cache.exists():
        ctx.progress.say(f"{variant_id}: calibrating ({method.name.lower()}, "
                         f"{ctx.calibration_count} samples)")
        reader = _calibration_reader(ctx, variant_id)
    with toolchain_step(variant_id, "quantize_static"), quiet_ort():
        if method == CalibrationMethod.Entropy and reader is not None:
            with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
                _entropy_ranges(source, settings["op_types_to_quantize"], reader, cache, Path(tmp))
            reader = None
        quantize_static(
            source, out, reader, quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8,
            calibration_cache_path=cache, **settings,
        )
        _float_graph_outputs(out)


def calibration_cache(source: Path, ctx: ExportContext, settings: dict[str, Any]) -> Path:
    """The cache file of activation ranges for ``source`` (pre-processed or base) and method."""
    method = settings["calibrate_method"].name.lower()
    percentile = settings["extra_options"].get("CalibPercentile")
    op_types = settings["op_types_to_quantize"]
    key = f"{source.stem}-{method}" + (f"-{percentile:g}" if percentile else "")
    key += "-transformer" if op_types else ""
    directory = ctx.work_dir / CACHE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{key}.json"


def _entropy_ranges(
    source: Path, op_types: list[str] | None, reader: Any, cache: Path, tmp: Path
) -> None:
    """Entropy (KL) calibration with 2048 histogram bins, saved as a calibration cache."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        source, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128},
    )
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)


def _static_op_types(base: Path) -> list[str] | None:
    """Op types quantize_static should touch: all (``None``) unless the graph has attention.

    In attention graphs the mask bias (``-1e4`` or even ``finfo.min``) flows through Add and
    Softmax; quantizing those tensors wastes the int8 range on the mask (minmax) or breaks the
    histogram calibrators (entropy, percentile). There only the weight-carrying ops are
    quantized and the rest stays float. Attention is recognised by LayerNormalization or by
    a MatMul of two activations (``Q @ K^T``).
    """
    import onnx

    graph = onnx.load(str(base)).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    attention = any(
        n.op_type == "LayerNormalization"
        or (n.op_type == "MatMul" and not constants.intersection(n.input))
        for n in graph.node
    )
    return sorted(TRANSFORMER_STATIC_OPS) if attention else None


def _float_graph_outputs(path: Path) -> int:
    """Drop the QuantizeLinear/DequantizeLinear pair quantize_static puts on graph outputs.

    The outputs are float anyway; the pair only clips them to the calibrated range (logits on
    unseen data exceed it) and adds rounding error. Each pair becomes an ``Identity``.

    Returns:
        The number of outputs freed.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    drop, nodes = set(), []
    for node in model.graph.node:
        q = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if node.output[0] in outputs and q is not None and q.op_type == "QuantizeLinear" \
                and readers.get(q.output[0]) == 1 and q.output[0] not in outputs:
            drop.add(q.output[0])
            nodes.append(helper.make_node("Identity", [q.input[0]], [node.output[0]],
                                          name=f"{node.name}_float_output"))
        else:
            nodes.append(node)
    if drop:
        kept = [n for n in nodes if not (n.op_type == "QuantizeLinear" and n.output[0] in drop)]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        onnx.save(model, str(path))
    return len(drop)


def _calibration_reader(ctx: ExportContext, variant_id: str) -> Any:
    """A ``CalibrationDataReader`` over ``ctx.calibration()``, samples cast to the input specs."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            samples = ctx.progress.iterate(
                ctx.calibration(), f"{variant_id}: calibration", total=ctx.calibration_count
            )
            self._it = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            sample = next(self._it, None)
            if sample is None:
                return None
            return {s.name: np.asarray(sample[s.name], dtype=s.np_dtype) for s in ctx.inputs}

    return _Reader()
