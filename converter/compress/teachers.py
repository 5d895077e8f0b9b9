"""Several distillation teachers: load and check the extra ones, and mix their soft targets.

Teacher 0 is always the current model (the one the chain hands to ``distill``); the recipe's
``teachers`` come after it. The soft target of a sample is a mixture of the teachers'
``softmax(logits / T)``: mixing the targets gives the same gradient as summing each teacher's
KL term with the same weights, and one teacher with weight 1 is exactly single-teacher
distillation. Weights are per sample (``confidence``: the teacher's top probability;
``true-label``: its probability of the sample's label) or ``fixed``; per-sample weights are
computed at T = 1, so they rank how sure each teacher really is, not the softened targets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from converter.compress.steps import DistillStep
from converter.errors import RecipeError
from edgeship.contract.errors import first_line

if TYPE_CHECKING:
    import torch


def load_teachers(step: DistillStep, current: torch.nn.Module, example: tuple) -> list[torch.nn.Module]:
    """The current model followed by each of ``step.teachers``, loaded like the student.

    Raises:
        ModelLoadError: a teacher factory cannot be loaded (stops the run: bad input).
        RecipeError: a teacher does not run on the model's inputs or its outputs differ in
            shape from the current model's (the recipe names the wrong model).
    """
    from converter.loading import load_model

    teachers = [current]
    for source in step.teachers:
        teacher = load_model(source)
        check_teacher(teacher, source, current, example, step)
        teachers.append(teacher)
    return teachers


def check_teacher(teacher: Any, source: str, current: Any, example: tuple, step: DistillStep) -> None:
    """Refuse a teacher whose outputs do not have the current model's shapes.

    Raises:
        RecipeError: naming the teacher and both shapes (or the teacher's error).
    """
    import torch

    from converter.compress.training import outputs_of

    with torch.inference_mode():
        want = [tuple(o.shape) for o in outputs_of(current.eval(), list(example))]
        try:
            got = [tuple(o.shape) for o in outputs_of(teacher.eval(), list(example))]
        except Exception as err:  # user code: any failure means the teacher does not fit
            raise RecipeError(f"{step.label()}: teacher {source} does not run on the model's "
                              f"inputs: {first_line(err)}") from err
    if got != want:
        raise RecipeError(f"{step.label()}: teacher {source} outputs {got}, the model being "
                          f"distilled {want}; a teacher must predict the same outputs")


def teacher_weights(logits: list[torch.Tensor], labels: torch.Tensor | None,
                    step: DistillStep) -> torch.Tensor:
    """Weight of each teacher for each sample, shape ``(batch, teachers)``, rows summing to 1.

    Args:
        logits: each teacher's logits, ``(batch, classes)``, teacher 0 first.
        labels: the batch's labels (needed by ``true-label``).
        step: its ``weighting`` and, for ``fixed``, ``teacher_weights`` (equal when empty).
    """
    import torch

    batch, count = logits[0].shape[0], len(logits)
    if step.weighting == "fixed":
        fixed = torch.tensor(step.teacher_weights or [1.0] * count, dtype=logits[0].dtype)
        return (fixed / fixed.sum()).expand(batch, count)
    probs = torch.stack([torch.softmax(t, dim=1) for t in logits], dim=1)  # (batch, teachers, classes)
    if step.weighting == "confidence":
        scores = probs.max(dim=2).values
    else:  # true-label
        if labels is None:
            raise ValueError("true-label weighting needs labels")
        scores = probs.gather(2, labels.view(-1, 1, 1).expand(batch, count, 1)).squeeze(2)
    return scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)


def mixed_targets(logits: list[torch.Tensor], weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """``Σ_k weights[:, k] · softmax(logits_k / T)``: the soft target of each sample."""
    import torch

    probs = torch.stack([torch.softmax(t / temperature, dim=1) for t in logits], dim=1)
    return (weights.unsqueeze(2) * probs).sum(dim=1)
