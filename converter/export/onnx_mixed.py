"""``onnx-mixed``: fp32, fp16 or int8 per MatMul and embedding table under a size or latency
budget.

How each precision is expressed in the graph (why: docs/decisions/2026-12-07-mixed-precision.md):

* int8: ``quantize_dynamic`` on exactly the int8 layers (``nodes_to_quantize``): int8
  per-channel weights, activations quantized at run time (``MatMulInteger``), as
  ``onnx-int8-dynamic``.
* fp16: the weight stored as a float16 initializer read through ``Cast`` to float32, so the
  MatMul computes in float32 (onnxruntime folds the Cast at load time: the file halves, the
  kernel is the float one).
* fp32: unchanged.

Per-layer errors come from two switchable onnxruntime sessions
(:class:`~converter.tuning.onnx_dynamic_layers.SwitchableModel`: one layer in int8 or fp16 at
a time; embedding tables by building the model with one table lowered); the choice is
:mod:`converter.tuning.mixed_precision`'s. Layers are the MatMul weights (Gemm heads rewritten
as MatMul) and the embedding tables (``Gather``; int8 is ``quantize_dynamic``'s int8 table +
DequantizeLinear); Conv kernels stay float32.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest
from converter.export.onnx_common import (
    built_variant,
    check_runs,
    gemm_to_matmul,
    quiet_ort,
    toolchain_step,
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

#: calibration samples the per-layer errors and the candidates are measured on.
SAMPLES = 16
#: the input of each layer op that holds its weight.
_WEIGHT_INPUT = {"MatMul": 1, "Gather": 0}


def build_mixed(request: VariantRequest, base: Path, ctx: ExportContext, out: Path) -> BuiltVariant:
    """Measure, walk the precision path, build and measure candidates, keep the best in budget.

    Options: ``budget`` (``{size_ratio = R}`` or ``{p50_ratio = R}``, against the fp32
    export), ``candidates`` (assignments built and measured), ``reduce_range`` (7-bit int8
    weights, as ``onnx-int8-dynamic``).

    Raises:
        VariantBuildError: a bad option, or no measured assignment meets the budget.
        NotApplicable: the graph has no MatMul with a constant weight.
    """
    budget = parse_budget(request.options.get("budget"), request.id)
    count = candidate_count(request.options.get("candidates"), request.id)
    reduce_range = bool(request.options.get("reduce_range", True))
    source = mixed_source(base, ctx)
    names = [s.name for s in ctx.inputs]
    samples = [s for _, s in zip(range(SAMPLES), ctx.calibration(), strict=False)]
    with toolchain_step(request, "per-layer sensitivity"), quiet_ort():
        layers = measure_layers(source, names, samples, reduce_range, ctx)
    if not layers:
        raise NotApplicable("no MatMul with a constant weight to choose a precision for")
    ctx.progress.say(f"{request.id}: {len(layers)} layers measured in fp16 and int8; building "
                     f"{count} assignments along the precision path")
    float_outputs = _outputs(source, names, samples)
    base_p50 = _p50(base, names, ctx)

    def write(assignment: dict[str, str], path: Path) -> None:
        with toolchain_step(request, "building an assignment"), quiet_ort():
            write_assignment(source, assignment, path, reduce_range)

    def error_of(path: Path) -> float:
        return output_error(_outputs(path, names, samples), float_outputs)["score"]

    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        measured = measure_candidates(layers, count, budget, Path(tmp), ".onnx", write, error_of,
                                      lambda path: _p50(path, names, ctx), base.stat().st_size,
                                      base_p50)
        best = choose([p for p, _ in measured], budget, request.id)
        shutil.copyfile(next(f for p, f in measured if p is best), out)
    check_runs(request, out, ctx)
    return built_variant(request, out, base, [step_name(best)],
                         mixed=details(layers, measured, best, budget, len(samples), base_p50))


def mixed_source(base: Path, ctx: ExportContext) -> Path:
    """The base export with Gemm rewritten as MatMul, made once per base (cached in ``ctx``).

    Not :func:`~converter.export.onnx_common.dynamic_source`: after ``quant_pre_process`` a
    dynamo export quantized on only some of its MatMuls fails to load in onnxruntime 1.32
    ("Attempt to replace the existing tensor", measured on the tiny encoder); the exported
    graph quantizes per layer cleanly.
    """
    import onnx

    key = ("onnx-mixed-source", str(base))
    if key not in ctx.cache:
        work = ctx.work_dir / "_onnx_mixed"
        work.mkdir(parents=True, exist_ok=True)
        model = onnx.load(str(base))
        gemm_to_matmul(model)
        ctx.cache[key] = work / "source.onnx"
        onnx.save(model, str(ctx.cache[key]))
    return ctx.cache[key]


def measure_layers(source: Path, names: list[str], samples: list[dict[str, np.ndarray]],
                   reduce_range: bool, ctx: ExportContext) -> list[Layer]:
    """Every constant-weight MatMul with its output error alone in fp16 and alone in int8."""
    import onnx

    from converter.tuning.onnx_dynamic_layers import (
        LayerSwitch,
        SwitchableModel,
        dynamic_switch,
        weight_modules,
    )

    modules = weight_modules(source, ctx.model)
    as_fp16 = LayerSwitch(frozenset({"MatMul"}), lambda w, axis: w,
                          lambda w, axis: w.astype(np.float16).astype(w.dtype),
                          quantize_activation=False)
    errors: dict[str, dict[str, float]] = {}
    switchable = {}
    for precision, switch in (("fp16", as_fp16), ("int8", dynamic_switch(True, reduce_range))):
        model = SwitchableModel(source, names, modules=modules, switch=switch)
        float_outputs = model.run(samples, ())
        for name, _, _ in model.layers:
            errors.setdefault(name, {})[precision] = output_error(model.run(samples, [name]),
                                                                  float_outputs)["score"]
        switchable = model
    graph = onnx.load(str(source)).graph
    inits = {t.name: t for t in graph.initializer}
    layers = []
    for name, op, module in switchable.layers:
        dims = list(inits[switchable.weights[name]].dims)
        layers.append(Layer(name, op, module, int(np.prod(dims)), int(dims[-1]), errors[name]))
    return layers + _embeddings(source, graph, names, samples, reduce_range, modules)


def _embeddings(source: Path, graph: Any, names: list[str], samples: list[dict[str, np.ndarray]],
                reduce_range: bool, modules: dict[str, str]) -> list[Layer]:
    """Embedding tables (Gather on a constant 2-D table), each measured by building the model
    with it alone in fp16 and in int8: a switchable session has no Gather form, and a model
    has few tables (on a MiniLM they hold half the weights)."""
    from onnx import TensorProto

    tables = {t.name: t for t in graph.initializer
              if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.name and n.input[0] in tables
               and next((a.i for a in n.attribute if a.name == "axis"), 0) == 0]
    if not gathers:
        return []
    float_outputs = _outputs(source, names, samples)
    layers = []
    with tempfile.TemporaryDirectory(dir=source.parent) as tmp:
        for node in gathers:
            errors = {}
            for precision in ("fp16", "int8"):
                path = Path(tmp) / f"{precision}.onnx"
                write_assignment(source, {node.name: precision}, path, reduce_range)
                errors[precision] = output_error(_outputs(path, names, samples),
                                                 float_outputs)["score"]
            dims = list(tables[node.input[0]].dims)
            layers.append(Layer(node.name, "Gather", modules.get(node.input[0]),
                                int(np.prod(dims)), 1, errors))
    return layers


def write_assignment(source: Path, assignment: dict[str, str], out: Path, reduce_range: bool) -> None:
    """The source graph with each layer in its assigned precision (module docstring)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = [name for name, p in assignment.items() if p == "int8"]
    if int8:
        quantize_dynamic(source, out, per_channel=True, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_quantize=int8,
                         op_types_to_quantize=["MatMul", "Gather"])
        model = onnx.load(str(out))
    else:
        model = onnx.load(str(source))
    fp16 = {name for name, p in assignment.items() if p == "fp16"}
    _weights_to_fp16(model, fp16)
    onnx.save(model, str(out))


def _weights_to_fp16(model: Any, nodes: set[str]) -> None:
    """Store the named MatMuls' weights (Gathers' tables) as float16, read through a Cast to float32, and drop
    the float32 weights no node reads any more (only those: removing other unused initializers
    of a dynamo export makes onnxruntime 1.32 refuse the graph, "Attempt to replace the
    existing tensor")."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    made: set[str] = set()
    casts = []
    for node in model.graph.node:
        slot = _WEIGHT_INPUT.get(node.op_type)
        if node.name not in nodes or slot is None or node.input[slot] not in inits:
            continue
        weight = node.input[slot]
        half, cast = f"{weight}_fp16", f"{weight}_fp16_as_fp32"
        if weight not in made:
            array = numpy_helper.to_array(inits[weight]).astype(np.float16)
            model.graph.initializer.append(numpy_helper.from_array(array, half))
            casts.append(helper.make_node("Cast", [half], [cast], name=f"{weight}_cast",
                                          to=TensorProto.FLOAT))
            made.add(weight)
        node.input[slot] = cast
    nodes_now = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + nodes_now)  # initializers' casts first: topological order
    read = {name for node in model.graph.node for name in node.input}
    keep = [t for t in model.graph.initializer if t.name not in made or t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _outputs(path: Path, names: list[str], samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    from edgeship.runtimes.onnx import OnnxRunner

    runner = OnnxRunner(path, names, threads=1)
    collected = [runner.run(sample) for sample in samples]
    return [np.concatenate([c[k] for c in collected]) for k in range(len(collected[0]))]


def _p50(path: Path, names: list[str], ctx: ExportContext) -> float:
    from edgeship.runtimes.onnx import OnnxRunner

    runner = OnnxRunner(path, names, threads=1)
    return measure_p50_ms(lambda: runner.run(ctx.example))
