"""The float16 and int8 ``onnx-*`` variants, built from the base export with onnxruntime tools.

* ``onnx-fp16``: ``onnxruntime.transformers.float16`` casts weights and compute to float16,
  keeping float32 inputs/outputs.
* ``onnx-int8-dynamic``: ``quant_pre_process`` then ``quantize_dynamic`` (int8 weights,
  activations quantized at run time).
``onnx-int8-static`` is in :mod:`converter.export.onnx_static` and ``onnx-int8-weights`` in
:mod:`converter.export.onnx_weights`; the helpers at the end of this module (pre-processing,
run check, details, error wrapping) are shared with them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.onnx import count_nodes

#: ops that carry quantized weights or activations, counted in ``details["quantized_nodes"]``.
QUANT_OPS = (
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv", "MatMulNBits",
    "GatherBlockQuantized", "QAttention",
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

    All the op types onnxruntime quantizes dynamically are included: MatMul/Gemm become
    ``MatMulInteger``, Conv ``ConvInteger`` and embedding tables int8 + DequantizeLinear.
    ``ConvInteger`` makes CNN files smaller but ~5x slower than float Conv on x86 CPU (4 conv
    3x3, 64 channels, 56x56: 26 ms vs 5 ms); ``onnx-int8-static`` is the CNN variant.
    Options: ``per_channel``, ``reduce_range`` (7-bit weights, the default: x86 CPUs without VNNI
    saturate with 8-bit ones; docs/formats-onnx.md).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_channel = bool(request.options.get("per_channel", False))
    reduce_range = bool(request.options.get("reduce_range", True))
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        pre = preprocess(base, Path(tmp), ctx)
        with toolchain_step(request, "quantize_dynamic"), quiet_ort():
            quantize_dynamic(pre, out, per_channel=per_channel, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8)
    require_quantized(request, out, "no MatMul, Gemm, Conv or Gather weights to quantize")
    check_runs(request, out, ctx)
    granularity = "per-channel" if per_channel else "per-tensor"
    return built_variant(request, out, base, [f"quant:dynamic:{granularity}"], weight_type="int8",
                         reduce_range=reduce_range)


# --------------------------------------------------------------------------- shared


def preprocess(base: Path, tmp: Path, ctx: ExportContext) -> Path:
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
            ctx.progress.say(f"onnx: quant_pre_process failed ({short(err)}), retrying simpler")
    return base


def check_runs(request: VariantRequest, path: Path, ctx: ExportContext) -> None:
    """Load the file on onnxruntime CPU and run the example sample once."""
    from edgeship.runtimes.onnx import OnnxRunner

    try:
        OnnxRunner(path, [s.name for s in ctx.inputs], threads=1).run(ctx.example)
    except Exception as err:
        raise VariantBuildError(f"{request.id}: onnxruntime cannot run it: {short(err)}") from err


def runs(path: Path, ctx: ExportContext) -> bool:
    """Whether onnxruntime CPU loads ``path`` and runs the example."""
    from edgeship.runtimes.onnx import OnnxRunner

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
def toolchain_step(request: VariantRequest | str, what: str) -> Iterator[None]:
    """Turn a toolchain exception into a one-line VariantBuildError (``request`` or its id)."""
    variant_id = request if isinstance(request, str) else request.id
    try:
        yield
    except (VariantBuildError, NotApplicable):
        raise
    except Exception as err:
        raise VariantBuildError(f"{variant_id}: {what} failed: {short(err)}") from err


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


def short(err: BaseException, limit: int = 200) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
