"""``onnx-int4-weights``: blockwise 4-bit weights for MatMul/Gemm-heavy models, float activations.

MatMul weights become ``com.microsoft.MatMulNBits`` (bits=4, onnxruntime's
``MatMulNBitsQuantizer``): one scale (and, asymmetric, one zero point) per ``block_size`` values
along the reduction axis. Embedding tables become ``GatherBlockQuantized`` with 8 bits by
default: 4-bit tables cost the MiniLM-style encoder its cosine gate (0.9895 mean, 0.943 worst
against 0.9995 with 8-bit tables, at 0.158 against 0.228 of the fp32 file). It reuses the int8
weight-only kind's preparation (:mod:`converter.export.onnx_weights`): Gemm heads rewritten as
MatMul, the coverage check that refuses CNNs, the int8 tables, replaced float tables dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.onnx_common import (
    built_variant,
    check_runs,
    quiet_ort,
    require_quantized,
    toolchain_step,
)
from converter.export.onnx_weights import (
    drop_unused_initializers,
    load_matmul_heavy,
    quantize_gathers,
)

#: bits an embedding table may take (0: left float32).
EMBEDDING_BITS = (0, 4, 8)
#: MatMulNBits ``accuracy_level``: 0 computes in float32 on dequantized weights; 4 quantizes
#: activations to int8 per block at run time (faster on CPU, less faithful).
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def build_int4_weights(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """Blockwise int4 MatMul weights (and int8 or int4 embedding tables), float activations.

    Options: ``block_size`` (power of two >= 16), ``symmetric`` (no zero points),
    ``embedding_bits`` (8, 4 or 0: float), ``accuracy_level`` (MatMulNBits compute).

    Raises:
        VariantBuildError: a bad option.
        NotApplicable: less than half of the float weights sit in MatMul/Gemm/Gather.
    """
    import onnx

    block, symmetric, embedding_bits, level = _options(request)
    model, gemms, coverage = load_matmul_heavy(base, embedding_bits > 0,
                                               "4-bit weights are for MatMul-heavy models")
    with toolchain_step(request, "int4 weight quantization"), quiet_ort():
        model = quantize_int4(model, block, symmetric, embedding_bits == 4, level)
        if embedding_bits == 8:
            quantize_gathers(model, block)
        drop_unused_initializers(model)
        onnx.save(model, str(out))
    require_quantized(request, out, "no weight could be quantized to 4 bits")
    check_runs(request, out, ctx)
    counts = _quantized_nodes(out)
    steps = [f"quant:weights:int4:block{block}{'' if symmetric else ':asym'}"]
    if counts["GatherBlockQuantized"]:
        steps.append(f"quant:embeddings:int{embedding_bits}:block{block}")
    return built_variant(
        request, out, base, steps, block_size=block, symmetric=symmetric, accuracy_level=level,
        embedding_bits=embedding_bits, gemm_converted=gemms,
        matmuls_quantized=counts["MatMulNBits"], embeddings_quantized=counts["GatherBlockQuantized"],
        weight_coverage=coverage,
    )


def quantize_int4(model: Any, block: int, symmetric: bool, embeddings: bool, level: int) -> Any:
    """MatMul (and Gather) with constant weights → 4-bit ``MatMulNBits`` (``GatherBlockQuantized``)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    ops = ("MatMul", "Gather") if embeddings else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=symmetric, bits=4, quant_format=QuantFormat.QOperator,
        op_types_to_quantize=ops, accuracy_level=level or None,
    )
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=symmetric,
                                     accuracy_level=level or None, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def _options(request: VariantRequest) -> tuple[int, bool, bool, int]:
    opts = request.options
    block = opts.get("block_size", 32)
    if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block & (block - 1):
        raise VariantBuildError(f"{request.id}: block_size {block!r} must be a power of two >= 16")
    symmetric = opts.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise VariantBuildError(f"{request.id}: option symmetric must be true or false")
    embedding_bits = opts.get("embedding_bits", 8)
    if isinstance(embedding_bits, bool) or embedding_bits not in EMBEDDING_BITS:
        raise VariantBuildError(f"{request.id}: embedding_bits {embedding_bits!r} must be one of "
                                f"{list(EMBEDDING_BITS)}")
    level = opts.get("accuracy_level", 0)
    if isinstance(level, bool) or level not in ACCURACY_LEVELS:
        raise VariantBuildError(f"{request.id}: accuracy_level {level!r} must be one of "
                                f"{list(ACCURACY_LEVELS)}")
    return block, symmetric, int(embedding_bits), int(level)


def _quantized_nodes(path: Path) -> dict[str, int]:
    """4-bit MatMulNBits and (4- or 8-bit) GatherBlockQuantized nodes of the written model."""
    import onnx

    counts = {"MatMulNBits": 0, "GatherBlockQuantized": 0}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        if node.op_type == "GatherBlockQuantized" or (node.op_type == "MatMulNBits" and bits == 4):
            counts[node.op_type] += 1
    return counts
