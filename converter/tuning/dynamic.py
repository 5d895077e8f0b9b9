"""Sensitivity for the int8-dynamic kinds, at a cost that fits a release of a 25M encoder.

ONNX layers are measured with one switchable onnxruntime session
(:mod:`~converter.tuning.onnx_dynamic_layers`). TFLite ops are ranked by that measurement of
the PyTorch module they come from when the model has an ONNX export: quantizing each op alone
with ai-edge-quantizer costs a full quantizer pass per op (seconds each on a 90 MB model), and
an outlier channel hurts a layer in both runtimes. Only without an ONNX export are TFLite ops
quantized one at a time (:mod:`~converter.tuning.tflite_dynamic_layers`). Either way the
number of float layers is checked on the variant's own runtime, and every tuning attempt is a
full build and validation there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from converter.recipe import VariantPlan
from converter.tuning.scoring import Accept

if TYPE_CHECKING:
    from converter.runner import VariantRunner

DYNAMIC_KINDS = ("onnx-int8-dynamic", "tflite-int8-dynamic")
#: most samples the dynamic sensitivity runs on: each layer costs a run of the whole model per
#: sample (a 22.7M encoder: ~30 ms), and outlier layers stand out on a few samples.
SAMPLES = 16


def dynamic_sensitivity_for(
    runner: VariantRunner, plan: VariantPlan, options: dict[str, Any],
    samples: list[dict[str, np.ndarray]], deadline: float, accept: Accept, max_float: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """``(rows, predicted float-layer count)`` for ``plan`` (an int8-dynamic kind)."""
    samples = samples[:SAMPLES]
    if plan.request.kind.kind == "onnx-int8-dynamic":
        return _onnx(runner, plan, options, samples, deadline, accept, max_float)
    from converter.tuning.tflite_dynamic_layers import tflite_dynamic_sensitivity

    base, _ = runner.base(plan.steps, "tflite")
    ranking = _onnx_ranking(runner, plan, samples, deadline)
    if ranking:
        runner.progress.say("sensitivity: ranking TFLite ops by the onnxruntime measurement of "
                            "their PyTorch modules")
    return tflite_dynamic_sensitivity(base, runner.context(plan.steps), samples, deadline, accept,
                                      max_float, ranking)


def _onnx(runner: VariantRunner, plan: VariantPlan, options: dict[str, Any],
          samples: list[dict[str, np.ndarray]], deadline: float, accept: Accept | None,
          max_float: int) -> tuple[list[dict[str, Any]], int | None]:
    from converter.export.onnx_common import dynamic_source
    from converter.tuning.onnx_dynamic_layers import dynamic_sensitivity, weight_modules

    base, _ = runner.base(plan.steps, "onnx")
    ctx = runner.context(plan.steps)
    source = dynamic_source(base, ctx)
    rows, predicted = dynamic_sensitivity(
        source, [s.name for s in ctx.inputs], options, samples, deadline, runner.progress,
        accept, max_float, weight_modules(source, ctx.model))
    ctx.cache[("dynamic-ranking",)] = {r["module"]: r for r in rows if r["module"]}
    return rows, predicted


def _onnx_ranking(runner: VariantRunner, plan: VariantPlan, samples: list[dict[str, np.ndarray]],
                  deadline: float) -> dict[str, dict[str, Any]] | None:
    """PyTorch module → its ONNX dynamic sensitivity row (cached; ``None`` without ONNX)."""
    ctx = runner.context(plan.steps)
    if ("dynamic-ranking",) not in ctx.cache:
        _, refused = runner.base(plan.steps, "onnx")
        if refused:
            return None
        _onnx(runner, plan, {"per_channel": True, "reduce_range": True}, samples, deadline, None, 0)
    return ctx.cache.get(("dynamic-ranking",)) or None
