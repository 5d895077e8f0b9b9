"""The float16 and int8 ``onnx-*`` variants, built from the base export with onnxruntime tools.

* ``onnx-fp16``: ``onnxruntime.transformers.float16`` casts weights and compute to float16,
  keeping float32 inputs/outputs.
* ``onnx-int8-dynamic``: ``quant_pre_process`` then ``quantize_dynamic`` (int8 weights,
  activations quantized at run time).
* ``onnx-int8-static``: ``quant_pre_process`` then ``quantize_static`` in QDQ format with
  calibration samples; integer inputs (token ids, masks) pass through unchanged.

``onnx-int8-weights`` is in :mod:`converter.export.onnx_weights`; the helpers at the end of
this module (run check, details, error wrapping) are shared with it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.onnx import count_nodes

#: ops that carry quantized weights or activations, counted in ``details["quantized_nodes"]``.
QUANT_OPS = (
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv", "MatMulNBits",
    "GatherBlockQuantized", "QAttention",
)
#: op types quantize_static quantizes in transformer-style graphs (see _static_op_types).
TRANSFORMER_STATIC_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather"})


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

    All the op types onnxruntime quantizes dynamically are included: MatMul/Gemm become
    ``MatMulInteger``, Conv ``ConvInteger`` and embedding tables int8 + DequantizeLinear.
    ``ConvInteger`` makes CNN files smaller but ~5x slower than float Conv on x86 CPU (4 conv
    3x3, 64 channels, 56x56: 26 ms vs 5 ms); ``onnx-int8-static`` is the CNN variant.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_channel = bool(request.options.get("per_channel", False))
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        pre = _preprocess(base, Path(tmp), ctx)
        with toolchain_step(request, "quantize_dynamic"), quiet_ort():
            quantize_dynamic(pre, out, per_channel=per_channel, weight_type=QuantType.QInt8)
    require_quantized(request, out, "no MatMul, Gemm, Conv or Gather weights to quantize")
    check_runs(request, out, ctx)
    granularity = "per-channel" if per_channel else "per-tensor"
    return built_variant(request, out, base, [f"quant:dynamic:{granularity}"], weight_type="int8")


# --------------------------------------------------------------------------- int8 static


def build_int8_static(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """QDQ int8 weights and activations with ranges calibrated on ``ctx.calibration()``."""
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
        "op_types_to_quantize": _static_op_types(base),
        "extra_options": {"CalibPercentile": float(opts.get("percentile", 99.999))}
        if method == "percentile" else {},
    }
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        pre = _preprocess(base, Path(tmp), ctx)
        _quantize_static(request, pre, out, ctx, Path(tmp), settings)
        require_quantized(request, out, "quantize_static found nothing to quantize")
        if pre != base and not _runs(out, ctx):
            ctx.progress.say(f"{request.id}: result does not load; quantizing without pre-processing")
            _quantize_static(request, base, out, ctx, Path(tmp), settings)
    check_runs(request, out, ctx)
    granularity = "per-channel" if settings["per_channel"] else "per-tensor"
    op_types = settings["op_types_to_quantize"]
    return built_variant(
        request, out, base, [f"quant:static:{method}:{granularity}"],
        activation_type=act, weight_type="int8", calibration_samples=ctx.calibration_count,
        op_types="all" if op_types is None else op_types,
    )


def _quantize_static(
    request: VariantRequest, source: Path, out: Path, ctx: ExportContext, tmp: Path,
    settings: dict[str, Any],
) -> None:
    """Calibrate and run ``quantize_static`` (QDQ, int8 weights), then free the graph outputs.

    ``quantize_static`` does not pass histogram sizes to the entropy calibrator, whose
    defaults (128 bins for 128 quantized bins) make it return the min/max range; for
    ``entropy`` the ranges are computed here with 2048 bins and handed over as a cache.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = settings["calibrate_method"]
    ctx.progress.say(f"{request.id}: calibrating ({method.name.lower()}, {ctx.calibration_count} samples)")
    reader, cache = _calibration_reader(ctx, request.id), None
    with toolchain_step(request, "quantize_static"), quiet_ort():
        if method == CalibrationMethod.Entropy:
            cache = tmp / "entropy-ranges.json"
            cache.unlink(missing_ok=True)
            _entropy_ranges(source, settings["op_types_to_quantize"], reader, cache, tmp)
            reader = None
        quantize_static(
            source, out, reader, quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8,
            calibration_cache_path=cache, **settings,
        )
        _float_graph_outputs(out)


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


# --------------------------------------------------------------------------- shared


def _preprocess(base: Path, tmp: Path, ctx: ExportContext) -> Path:
    """``quant_pre_process`` (shape inference + graph optimization); falls back gracefully.

    Symbolic shape inference fails on some graphs; the second try skips it, and when that
    fails too the base model is quantized as exported.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "preprocessed.onnx"
    for skip_symbolic in (False, True):
        try:
            with quiet_ort():
                quant_pre_process(str(base), str(pre), skip_symbolic_shape=skip_symbolic)
            return pre
        except Exception as err:
            ctx.progress.say(f"onnx: quant_pre_process failed ({_short(err)}), retrying simpler")
    return base


def check_runs(request: VariantRequest, path: Path, ctx: ExportContext) -> None:
    """Load the file on onnxruntime CPU and run the example sample once."""
    from edge_agent.runtimes.onnx import OnnxRunner

    try:
        OnnxRunner(path, [s.name for s in ctx.inputs], threads=1).run(ctx.example)
    except Exception as err:
        raise VariantBuildError(f"{request.id}: onnxruntime cannot run it: {_short(err)}") from err


def _runs(path: Path, ctx: ExportContext) -> bool:
    """Whether onnxruntime CPU loads ``path`` and runs the example."""
    from edge_agent.runtimes.onnx import OnnxRunner

    try:
        OnnxRunner(path, [s.name for s in ctx.inputs], threads=1).run(ctx.example)
    except Exception:  # any failure means no
        return False
    return True


def require_quantized(request: VariantRequest, path: Path, reason: str) -> None:
    """Fail the variant when the quantizer left the graph without any quantized node."""
    counts = count_nodes(path)
    if not any(counts.get(op) for op in QUANT_OPS):
        raise NotApplicable(f"{request.id}: {reason}")


def built_variant(
    request: VariantRequest, out: Path, base: Path, steps: list[str], **details: Any
) -> BuiltVariant:
    """The BuiltVariant with size and quantized-node counts in its details."""
    counts = count_nodes(out)
    size, base_size = out.stat().st_size, base.stat().st_size
    details.update(
        size_bytes=size,
        size_ratio=round(size / base_size, 4),
        quantized_nodes={op: counts[op] for op in QUANT_OPS if counts.get(op)},
        nodes=counts,
    )
    return BuiltVariant(path=out, precision=request.kind.precision, compression=steps,
                        details=details)


@contextlib.contextmanager
def toolchain_step(request: VariantRequest, what: str) -> Iterator[None]:
    """Turn a toolchain exception into a one-line VariantBuildError."""
    try:
        yield
    except (VariantBuildError, NotApplicable):
        raise
    except Exception as err:
        raise VariantBuildError(f"{request.id}: {what} failed: {_short(err)}") from err


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Keep onnxruntime's quantization logging (INFO per node, advice warnings) off the console."""
    # onnxruntime.quantization also logs through the root logger (logging.warning).
    names = ["", "onnxruntime", "onnxruntime.quantization.matmul_nbits_quantizer",
             "onnxruntime.transformers"]
    saved = [(lg, lg.level) for lg in map(logging.getLogger, names)]
    try:
        for lg, _ in saved:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print()
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _short(err: BaseException, limit: int = 200) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
