"""What the ONNX builders share: reading ONNX files, running onnxruntime's tools quietly,
checking and describing the result.

A leaf: the base export (:mod:`converter.export.onnx`) and the variant builders
(:mod:`~converter.export.onnx_quant`, :mod:`~converter.export.onnx_static`,
:mod:`~converter.export.onnx_weights`) import it, and it imports none of them, so a builder
never reaches back into the exporter or another builder. onnx and onnxruntime are imported
inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest

#: metadata key recording which exporter produced the file.
EXPORTER_KEY = "edgeship.exporter"
#: ops that carry quantized weights or activations, counted in ``details["quantized_nodes"]``.
QUANT_OPS = (
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv", "MatMulNBits",
    "GatherBlockQuantized", "QAttention",
)


# --------------------------------------------------------------------------- reading files


def read_exporter(path: Path) -> str:
    """Which exporter produced ``path`` (``dynamo`` / ``torchscript``), from its metadata."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((m.value for m in model.metadata_props if m.key == EXPORTER_KEY), "unknown")


def count_nodes(path: Path) -> dict[str, int]:
    """Node count per op type (for the report's details)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def float_params(model: Any) -> int:
    """Number of float32 weight elements among a model's initializers."""
    import onnx

    return sum(
        int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )


def gemm_to_matmul(model: Any) -> int:
    """Rewrite ``Gemm`` with a constant weight as ``MatMul`` (+ ``Add`` for the bias), in place.

    The exporters emit ``Gemm`` for a Linear on 2-D activations (classifier heads); MatMulNBits
    only takes ``MatMul``. Gemm nodes with ``transA``, ``alpha != 1`` or ``beta != 1`` are left.

    Returns:
        The number of nodes rewritten.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, done = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0
        plain = plain and attrs.get("beta", 1.0) == 1.0
        if node.op_type != "Gemm" or node.input[1] not in inits or not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        weight = weight.T if attrs.get("transB", 0) else weight
        w_name = f"{node.input[1]}_kn_{done}"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out],
                                      name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                          name=f"{node.name}_bias"))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


# --------------------------------------------------------------------------- running the tools


def preprocess(base: Path, tmp: Path, ctx: ExportContext) -> Path:
    """``quant_pre_process`` (shape inference + graph optimization); falls back gracefully.

    Symbolic shape inference fails on some graphs, and on dynamo exports of transformers the
    optimized graph fails to load in onnxruntime 1.32 ("Attempt to replace the existing
    tensor"); each fallback skips one step more, and when every one fails the base model is
    quantized as exported. The result is checked to load.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "preprocessed.onnx"
    for skips in ({}, {"skip_symbolic_shape": True}, {"skip_optimization": True},
                  {"skip_optimization": True, "skip_symbolic_shape": True}):
        try:
            with quiet_ort():
                quant_pre_process(str(base), str(pre), **skips)
        except Exception as err:
            ctx.progress.say(f"onnx: quant_pre_process failed ({short(err)}), retrying simpler")
            continue
        if loads(pre):
            return pre
        ctx.progress.say("onnx: the pre-processed graph does not load in onnxruntime, retrying simpler")
    return base


def dynamic_source(base: Path, ctx: ExportContext) -> Path:
    """The graph ``quantize_dynamic`` reads, made once per base export (cached in ``ctx``).

    :func:`preprocess`, then ``Gemm`` rewritten as ``MatMul``: dynamic quantization has no
    ``Gemm`` kernel, and the optimizer fuses a transformer's feed-forward MatMul + Add into
    one. The sensitivity run (:mod:`converter.tuning.onnx_dynamic_layers`) reads the same file,
    so the node names it ranks are the ones ``float_layers`` takes.
    """
    import onnx

    key = ("onnx-dynamic-source", str(base))
    if key not in ctx.cache:
        work = ctx.work_dir / "_onnx_dynamic"
        work.mkdir(parents=True, exist_ok=True)
        model = onnx.load(str(preprocess(base, work, ctx)))
        gemm_to_matmul(model)
        path = work / "source.onnx"
        onnx.save(model, str(path))
        ctx.cache[key] = path
    return ctx.cache[key]


def loads(path: Path) -> bool:
    """Whether onnxruntime CPU can create a session on ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # any failure means no
        return False
    return True


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
    """The first non-empty line of an error, cut to ``limit`` characters."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- checking the result


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
    """The BuiltVariant with size, quantized-node counts and the base's exporter in its details."""
    counts = count_nodes(out)
    size, base_size = out.stat().st_size, base.stat().st_size
    details.update(
        size_bytes=size,
        size_ratio=round(size / base_size, 4),
        quantized_nodes={op: counts[op] for op in QUANT_OPS if counts.get(op)},
        nodes=counts,
    )
    details.setdefault("exporter", read_exporter(base))
    return BuiltVariant(path=out, precision=request.kind.precision, compression=steps,
                        details=details)
