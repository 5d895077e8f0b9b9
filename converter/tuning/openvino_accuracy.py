"""NNCF accuracy control as a tuning step: the converter's gate turned into NNCF's metric and drop.

NNCF's ``quantize_with_accuracy_control`` keeps reverting the quantized ops that cost the
metric most until the drop is within ``max_drop``. The tuner hands it the gate it must pass:
for classification the metric is top-1 agreement with the float32 model and the drop allowed
is the tighter of ``1 - min_agreement`` and ``max_accuracy_drop`` (an accuracy drop is never
larger than the share of samples that disagree, so both gates hold on those samples); for
the other tasks it is the output cosine and ``1 - min_cosine``. The validation samples are the
eval set's first ``sensitivity_samples``, as for the other kinds' sensitivity runs; the attempt
is then validated on the whole eval set like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from converter.export.openvino_int8 import VALIDATION_KEY

if TYPE_CHECKING:
    from converter.recipe import VariantPlan
    from converter.runner import VariantRunner

#: the drop allowed when the task's gates are all switched off.
DEFAULT_MAX_DROP = 0.01


def accuracy_control_options(runner: VariantRunner, plan: VariantPlan) -> tuple[dict[str, Any], str]:
    """Options for an accuracy-controlled attempt of ``plan``, and the change it records.

    Leaves the validation samples in the export context's cache, where the builder reads them.
    """
    ctx = runner.context(plan.steps)
    samples = list(runner.eval_set.head(int(plan.tuning.sensitivity_samples)))
    ctx.cache[VALIDATION_KEY] = samples
    metric, max_drop = control_target(runner.task_kind, plan)
    change = f"NNCF accuracy control ({metric}, max drop {max_drop:g} on {len(samples)} samples)"
    return {"accuracy_control": True, "control_metric": metric, "max_drop": max_drop}, change


def control_target(task_kind: str, plan: VariantPlan) -> tuple[str, float]:
    """``(metric, max_drop)`` for NNCF from the plan's gates (see the module docstring)."""
    gates = plan.gates
    if task_kind == "classification":
        limits = [g for g in (1 - gates.min_agreement if gates.min_agreement is not None else None,
                              gates.max_accuracy_drop) if g is not None]
        return "top1", max(0.0, min(limits)) if limits else DEFAULT_MAX_DROP
    if gates.min_cosine is not None:
        return "cosine", max(0.0, 1 - gates.min_cosine)
    return "cosine", DEFAULT_MAX_DROP
