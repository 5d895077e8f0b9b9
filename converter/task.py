"""What a task kind measures and gates: the one table the metrics, the gates and the report read.

Top-1 agreement only means something for a classifier; an embedding is judged by cosine, a
regression by relative error, a multi-output (detection-like) model by the error of each of
its outputs. So the metrics of a variant are the ones its task measures (:data:`MEASURED`),
the gates check only what was measured, a gate left at its default gets the task's default
(:data:`DEFAULT_GATES`), and the report shows only the metrics present.

The task is the user's ``--task``, else inferred by :func:`infer_task_kind`. The device-side
golden check keeps its own rule (docs/protocol.md §6).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from converter.recipe import Gates, Recipe
from converter.specs import TensorSpec

#: metrics (against the PyTorch reference, and the labels) each task measures, besides
#: ``max_abs_err``; ``accuracy`` (and ``accuracy_drop``) needs labels.
MEASURED: dict[str, frozenset[str]] = {
    "classification": frozenset({"accuracy", "agreement", "cosine"}),
    "embedding": frozenset({"cosine", "rel_err"}),
    "regression": frozenset({"rel_err"}),
    "generic": frozenset({"cosine", "rel_err"}),
}

#: the gate each fidelity metric feeds; a gate whose metric the task does not measure is off.
GATE_METRIC = {
    "max_accuracy_drop": "accuracy",
    "min_agreement": "agreement",
    "min_source_agreement": "agreement",
    "min_cosine": "cosine",
    "max_rel_err": "rel_err",
}

#: gates a task switches on when the recipe leaves them unset (classification keeps
#: :class:`~converter.recipe.Gates`' own defaults).
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "classification": {},
    "embedding": {"min_cosine": 0.99},
    "regression": {"max_rel_err": 0.05},
    "generic": {"min_cosine": 0.99, "max_rel_err": 0.1},
}


def infer_task_kind(outputs: Sequence[TensorSpec], labels: np.ndarray | None) -> tuple[str, str]:
    """The task kind a model most likely has, and why (for the progress lines).

    * labels that are whole numbers → ``classification``; fractional labels → ``regression``;
    * no labels, one ``[batch, classes]`` output named ``*logits*`` → ``classification``
      (agreement, no accuracy; a language model's ``[batch, tokens, vocab]`` logits are not);
    * no labels, one float output ``[batch, features]`` → ``embedding``;
    * anything else (several outputs, sequences, maps) → ``generic``.
    """
    if labels is not None:
        if labels.dtype.kind in "iub" or np.array_equal(labels, np.round(labels)):
            return "classification", "the eval set has integer labels"
        return "regression", "the eval set has fractional labels"
    if len(outputs) == 1:
        out = outputs[0]
        if "logits" in out.name.lower() and len(out.shape) == 2:
            return "classification", f"its one output is named {out.name!r}"
        if len(out.shape) == 2 and out.shape[1] > 1 and out.np_dtype.kind == "f":
            return "embedding", f"one float output of shape {list(out.shape)} and no labels"
    count = f"{len(outputs)} outputs" if len(outputs) > 1 else f"output shape {list(outputs[0].shape)}"
    return "generic", f"{count} and no labels"


def gates_for_task(gates: Gates, kind: str) -> Gates:
    """``gates`` with the ones ``kind`` cannot measure switched off and its defaults filled in."""
    measured = MEASURED[kind]
    changes: dict[str, float | None] = {
        name: None for name, metric in GATE_METRIC.items()
        if metric not in measured and getattr(gates, name) is not None
    }
    for name, value in DEFAULT_GATES[kind].items():
        if getattr(gates, name) is None:
            changes[name] = value
    return dataclasses.replace(gates, **changes) if changes else gates


def recipe_for_task(recipe: Recipe, kind: str) -> Recipe:
    """The recipe with every variant's gates (and the recipe's) resolved for ``kind``."""
    plans = [dataclasses.replace(p, gates=gates_for_task(p.gates, kind)) for p in recipe.variants]
    return dataclasses.replace(recipe, variants=plans, gates=gates_for_task(recipe.gates, kind))
