"""``onnx-int8-weights``: weight-only int8 for transformer-style models, activations stay float.

MatMul weights become ``com.microsoft.MatMulNBits`` (bits=8, symmetric, blockwise, through
onnxruntime's ``MatMulNBitsQuantizer``) and embedding tables ``com.microsoft.GatherBlockQuantized``
(bits=8, built here: onnxruntime 1.32's quantizer only does 4-bit Gather). Classifier heads
exported as ``Gemm`` are rewritten as MatMul first. Models whose weights are mostly elsewhere
(Conv kernels) get :class:`NotApplicable`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.onnx_common import (
    built_variant,
    check_runs,
    float_params,
    gemm_to_matmul,
    quiet_ort,
    require_quantized,
    toolchain_step,
)

#: weight-only int8 is refused below this share of float weights in MatMul/Gemm/Gather.
MIN_WEIGHT_COVERAGE = 0.5


def load_matmul_heavy(base: Path, embeddings: bool, advice: str) -> tuple[Any, int, float]:
    """The base export with Gemms rewritten as MatMuls, the number rewritten, and the share of the
    float weights that weight-only quantization covers (MatMul, Gemm, and Gather tables when
    ``embeddings``).

    Raises:
        NotApplicable: no such weights, or less than :data:`MIN_WEIGHT_COVERAGE` of them
            (``advice`` says what to build instead).
    """
    import onnx

    model = onnx.load(str(base))
    total = float_params(model)
    gemms = gemm_to_matmul(model)
    covered = quantizable_params(model, embeddings)
    if covered == 0:
        raise NotApplicable("no MatMul, Gemm or Gather with constant float weights to quantize")
    if covered < MIN_WEIGHT_COVERAGE * total:
        raise NotApplicable(f"only {covered / total:.0%} of the float weights are in MatMul/Gemm/Gather "
                            f"(the rest are e.g. Conv kernels); {advice}")
    return model, gemms, round(covered / total, 4)


def build_int8_weights(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """Weight-only int8: blockwise MatMul weights and embedding tables, float activations.

    Raises:
        NotApplicable: less than half of the float weights sit in MatMul/Gemm/Gather (a CNN,
            whose weights are Conv kernels that this kind does not touch).
    """
    import onnx

    block = int(request.options.get("block_size", 32))
    embeddings = bool(request.options.get("quantize_embeddings", True))
    if block < 16 or block & (block - 1):
        raise VariantBuildError(f"{request.id}: block_size {block} must be a power of two >= 16")
    model, gemms, coverage = load_matmul_heavy(base, embeddings,
                                               "use onnx-int8-dynamic or onnx-int8-static")
    with toolchain_step(request, "weight-only quantization"), quiet_ort():
        model = quantize_matmuls(model, block)
        gathers = quantize_gathers(model, block) if embeddings else 0
        drop_unused_initializers(model)
        onnx.save(model, str(out))
    require_quantized(request, out, "no weight could be quantized")
    check_runs(request, out, ctx)
    steps = [f"quant:weights:int8:block{block}"]
    if gathers:
        steps.append(f"quant:embeddings:int8:block{block}")
    return built_variant(
        request, out, base, steps, block_size=block, gemm_converted=gemms,
        embeddings_quantized=gathers, weight_coverage=coverage,
    )


def quantizable_params(model: Any, embeddings: bool) -> int:
    """Float weight elements held by MatMul weights (input B) and, optionally, Gather tables."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    names = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    if embeddings:
        names |= {n.input[0] for n in model.graph.node if _is_embedding(n, inits)}
    return sum(int(np.prod(inits[n].dims)) for n in names if n in inits and len(inits[n].dims) >= 2)


def quantize_matmuls(model: Any, block: int) -> Any:
    """MatMul with a constant 2-D weight → ``MatMulNBits`` (bits=8, symmetric, blockwise)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, bits=8, quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block, is_symmetric=True,
                                     algo_config=config)
    quantizer.process()
    return quantizer.model.model


def quantize_gathers(model: Any, block: int) -> int:
    """Embedding tables → ``GatherBlockQuantized`` (bits=8), in place.

    onnxruntime's MatMulNBitsQuantizer only quantizes Gather to 4 bits, so the 8-bit op is
    built here: symmetric int8 per block of ``block`` values along the hidden axis, stored as
    uint8 with zero point 128.

    Returns:
        The number of Gather nodes replaced.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    nodes, done, made = [], 0, {}
    for node in model.graph.node:
        if not _is_embedding(node, inits):
            nodes.append(node)
            continue
        table = node.input[0]
        if table not in made:
            made[table] = _quantized_table(numpy_helper.to_array(inits[table]), block, table)
            model.graph.initializer.extend(made[table])
        nodes.append(helper.make_node(
            "GatherBlockQuantized", [made[table][0].name, node.input[1], made[table][1].name,
                                     made[table][2].name],
            [node.output[0]], name=f"{node.name}_q8", domain="com.microsoft",
            gather_axis=0, quantize_axis=1, block_size=block, bits=8,
        ))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def _is_embedding(node: Any, float_inits: dict[str, Any]) -> bool:
    """A Gather on axis 0 of a constant 2-D float table."""
    if node.op_type != "Gather" or node.input[0] not in float_inits:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return axis == 0 and len(float_inits[node.input[0]].dims) == 2


def _quantized_table(table: np.ndarray, block: int, name: str) -> list[Any]:
    """Blockwise symmetric int8 of a ``[rows, dim]`` table: data, scales, zero points."""
    from onnx import numpy_helper

    rows, dim = table.shape
    blocks = -(-dim // block)
    padded = np.zeros((rows, blocks * block), np.float32)
    padded[:, :dim] = table
    grouped = padded.reshape(rows, blocks, block)
    scales = np.abs(grouped).max(axis=2) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(grouped / scales[..., None]), -127, 127).reshape(rows, -1)[:, :dim]
    data = (q.astype(np.int16) + 128).astype(np.uint8)
    zero = np.full(scales.shape, 128, np.uint8)
    return [
        numpy_helper.from_array(data, f"{name}_q8"),
        numpy_helper.from_array(scales.astype(table.dtype), f"{name}_q8_scales"),
        numpy_helper.from_array(zero, f"{name}_q8_zero_points"),
    ]


def drop_unused_initializers(model: Any) -> None:
    """Remove initializers no node reads (the float tables replaced above)."""
    used = _graph_reads(model.graph)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _graph_reads(graph: Any) -> set[str]:
    """Every tensor name a graph's nodes (and their subgraphs) read, plus its outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _graph_reads(sub)
    return used
