"""``tflite-mixed``: fp32, fp16 or int8 per weighted op under a size or latency budget.

Each precision is one ai-edge-quantizer recipe entry whose regex names exactly the ops that
take it (their output tensors, :func:`~converter.export.tflite_common.scope_regex`):

* int8: ``add_dynamic_config`` (int8 per-channel weights, activations quantized at run time
  by LiteRT's kernels), as ``tflite-int8-dynamic``.
* fp16: ``add_weight_only_config`` with ``FLOAT_CASTING`` (float16 weights dequantized to
  float32 for compute), as ``tflite-fp16``.
* fp32: no entry.

Each op's error in fp16 and in int8 is measured by quantizing it alone and running LiteRT
(one quantizer pass per op and precision); the choice is
:mod:`converter.tuning.mixed_precision`'s.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.tflite_common import (
    model_facts,
    quantizer_errors,
    scope_regex,
    write_quantized,
)
from converter.tuning.mixed_precision import (
    Layer,
    candidate_count,
    choose,
    details,
    measure_candidates,
    measure_p50_ms,
    parse_budget,
    step_name,
)
from converter.tuning.scoring import output_error

#: calibration samples the per-op errors and the candidates are measured on.
SAMPLES = 16
#: ops with a constant weight at input 1, and the axis of its output channels.
_WEIGHTED = {"FULLY_CONNECTED": 0, "CONV_2D": 0, "DEPTHWISE_CONV_2D": -1, "EMBEDDING_LOOKUP": 0}


def build_mixed(request: VariantRequest, base: Path, ctx: ExportContext, out: Path) -> BuiltVariant:
    """Measure, walk the precision path, build and measure candidates, keep the best in budget.

    Options: ``budget`` (``{size_ratio = R}`` or ``{p50_ratio = R}``, against the fp32
    export) and ``candidates`` (assignments built and measured).

    Raises:
        VariantBuildError: a bad option, the quantizer failed, or no measured assignment
            meets the budget.
        NotApplicable: the model has no op with a constant weight.
    """
    from converter.tuning.tflite_layers import run_tflite

    budget = parse_budget(request.options.get("budget"), request.id)
    count = candidate_count(request.options.get("candidates"), request.id)
    names, output_names = [s.name for s in ctx.inputs], [s.name for s in ctx.outputs]
    samples = [s for _, s in zip(range(SAMPLES), ctx.calibration(), strict=False)]
    float_outputs = run_tflite(base, samples, names, output_names)

    def error_of(path: Path) -> float:
        return output_error(run_tflite(path, samples, names, output_names), float_outputs)["score"]

    def write(assignment: dict[str, str], path: Path) -> None:
        with quantizer_errors(request):
            write_assignment(base, assignment, path)

    layers = weighted_ops(base, ctx)
    if not layers:
        raise NotApplicable("no op with a constant weight to choose a precision for")
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        layers = [_measured(layer, Path(tmp), write, error_of) for layer in layers]
        ctx.progress.say(f"{request.id}: {len(layers)} ops measured in fp16 and int8; building "
                         f"{count} assignments along the precision path")
        base_p50 = _p50(base, names, ctx.example)
        measured = measure_candidates(layers, count, budget, Path(tmp), ".tflite", write, error_of,
                                      lambda path: _p50(path, names, ctx.example), base.stat().st_size,
                                      base_p50)
        best = choose([p for p, _ in measured], budget, request.id)
        shutil.copyfile(next(f for p, f in measured if p is best), out)
    facts = model_facts(out)
    return BuiltVariant(
        out, request.kind.precision, [step_name(best)],
        details={**facts, "size_ratio": round(facts["size_bytes"] / base.stat().st_size, 4),
                 "mixed": details(layers, measured, best, budget, len(samples), base_p50)},
    )


def weighted_ops(base: Path, ctx: ExportContext) -> list[Layer]:
    """The ops with a constant float weight, named as ai-edge-quantizer's recipe regex reads
    them (their first output tensor), not yet measured."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    from converter.export.tflite_ops import module_of_scope, resolve_module

    model = fb.read_model(base.read_bytes())
    graph = model.subgraphs[0]
    layers = []
    for op in graph.operators:
        code = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        name = code.name if code is not None else ""
        if name not in _WEIGHTED or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        weight = graph.tensors[op.inputs[1]]
        if weight.type != 0 or model.buffers[weight.buffer].data is None:  # not constant float32
            continue
        scope = fb.get_tensor_name(graph.tensors[op.outputs[0]])
        shape = [int(d) for d in weight.shape]
        layers.append(Layer(scope, name, resolve_module(ctx.model, module_of_scope(scope)),
                            int(np.prod(shape)), shape[_WEIGHTED[name]]))
    return layers


def write_assignment(base: Path, assignment: dict[str, str], out: Path) -> None:
    """The model with each op in its assigned precision (module docstring)."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    from converter.quiet import hidden_progress_bars

    fp16 = [name for name, p in assignment.items() if p == "fp16"]
    int8 = [name for name, p in assignment.items() if p == "int8"]
    if not fp16 and not int8:
        shutil.copyfile(base, out)
        return
    q = quantizer.Quantizer(str(base))
    if fp16:
        q.add_weight_only_config(regex=scope_regex(fp16),
                                 operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                 num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    if int8:
        q.add_dynamic_config(regex=scope_regex(int8),
                             operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8,
                             granularity=qtyping.QuantGranularity.CHANNELWISE)
    with warnings.catch_warnings(), hidden_progress_bars():
        warnings.simplefilter("ignore")
        write_quantized(q, out)


def _measured(layer: Layer, tmp: Path, write: Any, error_of: Any) -> Layer:
    """``layer`` with its output error alone in fp16 and alone in int8."""
    errors = {}
    for precision in ("fp16", "int8"):
        path = tmp / f"alone-{precision}.tflite"
        write({layer.name: precision}, path)
        errors[precision] = error_of(path)
    return Layer(layer.name, layer.op, layer.module, layer.weights, layer.channels, errors)


def _p50(path: Path, names: list[str], example: dict[str, np.ndarray]) -> float:
    from edgeship.runtimes.litert import LiteRTRunner

    runner = LiteRTRunner(path, names, threads=1)
    return measure_p50_ms(lambda: runner.run(example))
