"""``distill``: train a smaller student (its own factory) to imitate the current model.

Loss per batch, with ``T`` the temperature of the epoch::

    (1 - alpha) * T² * KL(softmax(teacher / T) || softmax(student / T))
        + alpha * cross_entropy(student, labels)
        + feature_weight * Σ MSE(adapter(student_layer), teacher_layer)      # optional

The T² factor keeps the soft-target gradients on the scale of the hard-label ones (Hinton et
al., 2015). ``T`` moves linearly from ``temperature[0]`` to ``temperature[1]`` over the epochs
(soft targets early, sharp at the end). Feature pairs name a student module and a teacher
module whose outputs should match; when the channel counts differ a learned 1x1 convolution
(or a linear map for 2-D features) adapts the student's, and is discarded after training.
Without labels the hard-label term is dropped; models that are not classifiers (no labels at
all) are distilled with MSE on every output. One progress line per epoch: loss, temperature
and eval accuracy.

Several teachers (``teachers = [...]``, after the current model): the soft target is their
mixture, weighted per sample or fixed (:mod:`converter.compress.teachers`); without labels the
MSE target is the fixed-weight mean of their outputs. Feature pairs always name layers of the
current model (teacher 0): the others may have any architecture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from converter.compress.env import StepEnv
from converter.compress.steps import DistillStep
from converter.errors import CompressionError
from edgeship.contract.errors import first_line

if TYPE_CHECKING:
    import torch


def temperature_at(step: DistillStep, epoch: int, epochs: int) -> float:
    """Linear schedule from ``temperature[0]`` (first epoch) to ``temperature[1]`` (last)."""
    start, end = step.temperature
    if epochs <= 1:
        return end
    return start + (end - start) * epoch / (epochs - 1)


def distill(
    teacher: torch.nn.Module, step: DistillStep, env: StepEnv
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``step.student`` from ``teacher`` on ``env.train``.

    Returns:
        The trained student (eval mode) and details: parameter/MAC counts of both, the
        settings, and the per-epoch history (loss, T, eval accuracy).

    Raises:
        CompressionError: no training data, a student whose outputs differ in shape from the
            teacher's, or a feature layer that does not exist or cannot be adapted.
        ModelLoadError: the student factory cannot be loaded.
    """
    import torch
    from torch.nn import functional

    from converter.compress.teachers import load_teachers, mixed_targets, teacher_weights
    from converter.compress.training import accuracy_on, fit, frozen_outputs, outputs_of
    from converter.loading import load_model

    if env.train is None:
        raise CompressionError(f"{step.label()}: distillation needs training data (--train FILE.npz)")
    example = env.example_tensors()
    # teachers first: a factory that trains on first use must not move the seed the student uses
    teachers = load_teachers(step, teacher, example)
    torch.manual_seed(env.training.seed)
    student = load_model(step.student)
    _check_outputs(student, teacher, example, step)  # before the taps hook the (cached) teacher
    taps = _FeatureTaps(student, teacher, step.features, example)
    teacher_runs = [frozen_outputs(t) for t in teachers]
    epochs = env.training.epochs if step.epochs is None else step.epochs
    state = {"T": step.temperature[0]}
    classify = env.train.labels is not None
    if not classify and step.weighting != "fixed":
        raise CompressionError(f"{step.label()}: {step.weighting} weighting needs integer labels "
                               "in the training data; use weighting = 'fixed'")
    weight_sums = torch.zeros(len(teachers))

    def loss_fn(inputs: list, labels: Any, epoch: int) -> torch.Tensor:
        t = state["T"]
        targets = [run(inputs) for run in teacher_runs]
        outputs = outputs_of(student, inputs)
        if classify:
            s_logits = outputs[0].reshape(len(labels), -1)
            t_logits = [out[0].reshape(len(labels), -1) for out in targets]
            weights = teacher_weights(t_logits, labels, step)
            weight_sums.add_(weights.sum(dim=0))
            kd = functional.kl_div(functional.log_softmax(s_logits / t, dim=1),
                                   mixed_targets(t_logits, weights, t),
                                   reduction="batchmean") * t * t
            loss = (1 - step.alpha) * kd + step.alpha * functional.cross_entropy(s_logits, labels)
        else:
            fixed = teacher_weights([out[0].reshape(len(inputs[0]), -1) for out in targets], None, step)[0]
            mixed = [sum(w * out[i] for w, out in zip(fixed, targets, strict=True))
                     for i in range(len(outputs))]
            loss = sum(functional.mse_loss(o, r) for o, r in zip(outputs, mixed, strict=True))
        return loss + step.feature_weight * taps.loss() if taps.pairs else loss

    def on_epoch(epoch: int) -> dict[str, Any]:
        state["T"] = temperature_at(step, epoch, epochs)
        return {"T": round(state["T"], 3)}

    before = env.size_facts(teacher)
    try:
        history = fit(
            student, env.train, loss_fn, epochs=epochs, lr=env.training.lr,
            batch_size=env.training.batch_size, seed=env.training.seed, progress=env.progress,
            label=f"distill {step.student}", eval_set=env.eval_set,
            extra_parameters=taps.parameters(), on_epoch=on_epoch,
        )
    finally:
        taps.remove()
    after = env.size_facts(student)
    details: dict[str, Any] = {
        "student": step.student, "temperature": list(step.temperature), "alpha": step.alpha,
        "epochs": epochs, "features": [list(p) for p in step.features],
        "teacher_params": before["params"], "student_params": after["params"],
        "params_ratio": round(after["params"] / max(before["params"], 1), 4),
        "teacher_macs": before["macs"], "student_macs": after["macs"],
        "history": history,
    }
    if step.teachers:
        total = float(weight_sums.sum()) or 1.0
        details.update(
            teachers=["(current model)", *step.teachers], weighting=step.weighting,
            mean_teacher_weights=[round(float(w) / total, 4) for w in weight_sums] if classify
            else [round(w / sum(step.teacher_weights or [1.0] * len(teachers)), 4)
                  for w in step.teacher_weights or [1.0] * len(teachers)],
            teacher_accuracy=[accuracy_on(t, env.eval_set) for t in teachers],
        )
    return student.eval(), details


def _check_outputs(student: Any, teacher: Any, example: tuple, step: DistillStep) -> None:
    import torch

    from converter.compress.training import outputs_of

    with torch.inference_mode():
        t_shapes = [tuple(o.shape) for o in outputs_of(teacher.eval(), list(example))]
        try:
            s_shapes = [tuple(o.shape) for o in outputs_of(student.eval(), list(example))]
        except Exception as err:  # user code: any failure means the student does not fit
            raise CompressionError(f"{step.label()}: student {step.student} does not run on the "
                                   f"teacher's inputs: {first_line(err)}") from err
    if s_shapes != t_shapes:
        raise CompressionError(f"{step.label()}: student {step.student} outputs {s_shapes}, "
                               f"the teacher {t_shapes}")


class _FeatureTaps:
    """Forward hooks that keep the named layers' outputs, plus the adapters between them."""

    def __init__(self, student: Any, teacher: Any, pairs: tuple[tuple[str, str], ...],
                 example: tuple) -> None:
        import torch

        self.pairs = pairs
        self.student_out: dict[str, Any] = {}
        self.teacher_out: dict[str, Any] = {}
        self.hooks: list[Any] = []
        self.adapters: dict[str, Any] = {}
        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        for s_name, t_name in pairs:
            if s_name not in s_modules or t_name not in t_modules:
                raise CompressionError(f"distill: feature pair {s_name} -> {t_name}: no such "
                                       f"{'student' if s_name not in s_modules else 'teacher'} module")
            self.hooks.append(s_modules[s_name].register_forward_hook(self._keep(self.student_out, s_name)))
            self.hooks.append(t_modules[t_name].register_forward_hook(self._keep(self.teacher_out, t_name)))
        if pairs:
            with torch.no_grad():
                student.eval()(*example)
                teacher.eval()(*example)
            for s_name, t_name in pairs:
                self.adapters[s_name] = _adapter(self.student_out[s_name], self.teacher_out[t_name],
                                                 s_name, t_name)

    @staticmethod
    def _keep(store: dict[str, Any], name: str):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            store[name] = output

        return hook

    def loss(self) -> torch.Tensor:
        from torch.nn import functional

        total = 0.0
        for s_name, t_name in self.pairs:
            adapted = self.adapters[s_name](self.student_out[s_name])
            total = total + functional.mse_loss(adapted, self.teacher_out[t_name].detach())
        return total

    def parameters(self) -> list[Any]:
        return [p for a in self.adapters.values() for p in a.parameters()]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _adapter(student_feat: Any, teacher_feat: Any, s_name: str, t_name: str) -> Any:
    from torch import nn

    s_shape, t_shape = tuple(student_feat.shape), tuple(teacher_feat.shape)
    if s_shape == t_shape:
        return nn.Identity()
    if len(s_shape) == len(t_shape) == 4 and s_shape[2:] == t_shape[2:]:
        return nn.Conv2d(s_shape[1], t_shape[1], 1)
    if len(s_shape) == len(t_shape) == 2:
        return nn.Linear(s_shape[1], t_shape[1])
    raise CompressionError(f"distill: features {s_name} {s_shape} and {t_name} {t_shape} differ in "
                           "more than the channel count")
