"""Variants not worth building on a model, decided before building them.

Full static int8 on a transformer graph (attention, Softmax and LayerNorm in the export): it
puts LayerNorm inputs and attention scores in int8, where transformers lose fidelity, and is
slower than fp32. Weight-only int8 once the format's dynamic int8 passed faster than fp32.
Why and the measurements: docs/decisions/2026-12-07-transformer-int8.md.
``tuning.skip_predicted = false`` builds them anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: kinds the prediction applies to: every activation in int8.
STATIC_KINDS = ("onnx-int8-static", "tflite-int8")
#: weight-only int8 kinds, and the faster int8 kind of their format that replaces them.
REPLACED_WHEN_PASSED = {"onnx-int8-weights": "onnx-int8-dynamic"}


@dataclass(frozen=True)
class GraphProfile:
    """What a graph computes, counted by op (LayerNorm counted once however it is lowered)."""

    layer_norms: int = 0
    softmaxes: int = 0
    attention_matmuls: int = 0
    weight_matmuls: int = 0
    convolutions: int = 0

    def describe(self) -> str:
        return (f"{self.attention_matmuls} attention MatMuls (activation x activation), "
                f"{self.softmaxes} Softmax, {self.layer_norms} LayerNorm, {self.weight_matmuls} "
                f"weight MatMuls, {self.convolutions} convolutions")


def static_int8_verdict(profile: GraphProfile) -> str | None:
    """Why full static int8 is not built on this graph, or ``None`` when it is worth trying."""
    if profile.attention_matmuls >= 2 and profile.softmaxes >= 1 and profile.layer_norms >= 1:
        return (f"not built: a transformer graph ({profile.describe()}); full-integer int8 "
                "quantizes LayerNorm inputs and attention scores, which costs transformers their "
                "fidelity, and runs the float ops between Q/DQ pairs, so it is not faster than "
                "fp32; the int8-dynamic variant is this model's int8 (tuning.skip_predicted = "
                "false builds it anyway)")
    return None


def weight_only_verdict(kind: str, passed: dict[str, tuple[str, float | None]]) -> str | None:
    """Why weight-only ``kind`` is not built, or ``None``.

    Args:
        kind: the variant kind about to be built.
        passed: kinds that passed so far (same model) → ``(variant id, p50 ratio to the fp32
            variant of their format, or None when unmeasured)``.
    """
    replacement = REPLACED_WHEN_PASSED.get(kind)
    variant_id, ratio = passed.get(replacement, ("", None)) if replacement else ("", None)
    if ratio is None or ratio >= 1:
        return None
    return (f"not built: {variant_id} passed its gates at p50 {ratio:.2f}x fp32; weight-only int8 "
            "runs float MatMuls on dequantized weights (slower than fp32 on CPU) and ships only "
            "where it is the only faithful int8 of its format (tuning.skip_predicted = false "
            "builds it anyway)")


def weight_only_note(kind: str, outcomes: dict[str, str]) -> str | None:
    """The report note of a weight-only ``kind`` that passed while the faster int8 of its format
    (``outcomes``: kind → status so far) did not: it ships as the only faithful int8."""
    replacement = REPLACED_WHEN_PASSED.get(kind)
    status = outcomes.get(replacement) if replacement else None
    if status is None or status == "passed":
        return None
    return f"ships as the only faithful int8 of its format: {replacement} {status}"


def onnx_profile(path: Path) -> GraphProfile:
    """Profile of an ONNX graph: a MatMul is a weight MatMul when an initializer feeds it."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ops = [n.op_type for n in graph.node]
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    weight = sum(1 for n in matmuls if any(i in constants for i in n.input[:2]))
    norms = ops.count("LayerNormalization") + ops.count("SimplifiedLayerNormalization")
    if not norms:  # decomposed: two ReduceMean per LayerNorm
        norms = ops.count("ReduceMean") // 2
    return GraphProfile(layer_norms=norms, softmaxes=ops.count("Softmax"),
                        attention_matmuls=len(matmuls) - weight, weight_matmuls=weight,
                        convolutions=ops.count("Conv"))


def tflite_profile(path: Path) -> GraphProfile:
    """Profile of a ``.tflite`` main subgraph (litert-torch lowers LayerNorm to MEAN,
    SQUARED_DIFFERENCE and RSQRT: one RSQRT per LayerNorm)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(path.read_bytes())
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators:
        code = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        ops.append(code.name if code is not None else "CUSTOM")
    return GraphProfile(
        layer_norms=ops.count("RSQRT"), softmaxes=ops.count("SOFTMAX"),
        attention_matmuls=ops.count("BATCH_MATMUL"), weight_matmuls=ops.count("FULLY_CONNECTED"),
        convolutions=ops.count("CONV_2D") + ops.count("DEPTHWISE_CONV_2D"),
    )


def profile_of(fmt: str, base: object) -> GraphProfile | None:
    """The profile of a format's base export (``None`` for formats without a reader)."""
    if fmt == "onnx" and isinstance(base, Path):
        return onnx_profile(base)
    if fmt == "tflite" and isinstance(base, Path):
        return tflite_profile(base)
    return None
