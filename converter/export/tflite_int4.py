"""``tflite-int4-weights``: blockwise 4-bit weights of fully connected layers and embedding tables.

ai-edge-quantizer stores blockwise int4 only for its dynamic-range recipe
(``dynamic_wi4_afp32_blockwise``: FULLY_CONNECTED and EMBEDDING_LOOKUP; its weight-only int4
is per channel): weights are INT4 tensors with one float16 scale per ``block_size`` values,
and LiteRT's kernels quantize the float activations at run time. Models whose weights are
mostly elsewhere (Conv kernels) get :class:`NotApplicable`, as ``onnx-int4-weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.tflite_common import model_facts, quantizer_errors, write_quantized

#: the block sizes ai-edge-quantizer has a granularity for.
BLOCK_SIZES = (32, 64, 128, 256)
#: refused below this share of the float weights in fully connected / embedding ops.
MIN_WEIGHT_COVERAGE = 0.5
#: ops whose weight (input index) the blockwise int4 recipe quantizes.
_INT4_OPS = {"FULLY_CONNECTED": 1, "EMBEDDING_LOOKUP": 1}


def build_int4_weights(
    request: VariantRequest, base: Path, ctx: ExportContext, out: Path
) -> BuiltVariant:
    """Blockwise int4 weights (FULLY_CONNECTED, EMBEDDING_LOOKUP), activations quantized at
    run time by LiteRT's kernels. Option: ``block_size`` (32, 64, 128 or 256).

    Raises:
        VariantBuildError: a bad block size, or the quantizer failed.
        NotApplicable: less than half of the float weights are in those ops.
    """
    block = request.options.get("block_size", 32)
    if block not in BLOCK_SIZES or isinstance(block, bool):
        raise VariantBuildError(f"{request.id}: block_size {block!r} must be one of "
                                f"{list(BLOCK_SIZES)}")
    covered, total = weight_coverage(base)
    if covered == 0:
        raise NotApplicable("no fully connected or embedding weights to quantize to 4 bits")
    if covered < MIN_WEIGHT_COVERAGE * total:
        raise NotApplicable(
            f"only {covered / total:.0%} of the float weights are in fully connected / embedding "
            "ops (the rest are e.g. Conv kernels); 4-bit weights are for MatMul-heavy models"
        )
    with quantizer_errors(request):
        from ai_edge_quantizer import qtyping, quantizer

        q = quantizer.Quantizer(str(base))
        q.add_dynamic_config(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=4,
            granularity=getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block}"),
        )
        write_quantized(q, out)
    int4 = int4_tensors(out)
    if not int4:
        out.unlink(missing_ok=True)
        raise NotApplicable("ai-edge-quantizer stored no weight in 4 bits on this model")
    facts = model_facts(out)
    return BuiltVariant(
        out, request.kind.precision, [f"quant:dynamic:int4:block{block}"],
        details={**facts, "block_size": block, "int4_tensors": int4,
                 "size_ratio": round(facts["size_bytes"] / base.stat().st_size, 4),
                 "weight_coverage": round(covered / total, 4)},
    )


def weight_coverage(path: Path) -> tuple[int, int]:
    """``(float weight elements in FULLY_CONNECTED/EMBEDDING_LOOKUP, all float weight elements)``."""
    model, graph = _main_graph(path)
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    constant = {i: int(np.prod(t.shape)) for i, t in enumerate(graph.tensors)
                if t.type == 0 and model.buffers[t.buffer].data is not None and len(t.shape) >= 2}
    covered = set()
    for op in graph.operators:
        code = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        index = _INT4_OPS.get(code.name if code is not None else "")
        if index is not None and len(op.inputs) > index and op.inputs[index] in constant:
            covered.add(int(op.inputs[index]))
    return sum(constant[i] for i in covered), sum(constant.values())


def int4_tensors(path: Path) -> int:
    """How many tensors of the main subgraph are stored as INT4."""
    from ai_edge_litert.schema_py_generated import TensorType

    _, graph = _main_graph(path)
    return sum(1 for t in graph.tensors if t.type == TensorType.INT4)


def _main_graph(path: Path) -> tuple[Any, Any]:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(path.read_bytes())
    return model, model.subgraphs[0]
