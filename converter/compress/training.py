"""Training helpers shared by fine-tuning and distillation: batches, the loop, eval accuracy.

Training data is a :class:`~converter.data.SampleSet` (``--train FILE.npz``, same layout as
the eval set). Samples are stacked along axis 0 and fed in batches of ``batch_size`` rows, so
the model must accept a batch dimension other than the one in its input spec (models that do
not are evaluated one spec-sized batch at a time, and cannot be trained here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.data import SampleSet
from converter.progress import Progress

if TYPE_CHECKING:
    import torch

#: rows per forward pass when evaluating.
EVAL_CHUNK = 256


@dataclass
class TrainingSet:
    """Training inputs (torch tensors in positional order) and optional integer labels."""

    inputs: list[torch.Tensor]
    labels: torch.Tensor | None

    @classmethod
    def from_samples(cls, samples: SampleSet) -> TrainingSet:
        import torch

        inputs = [torch.from_numpy(np.ascontiguousarray(samples.arrays[s.name])) for s in samples.specs]
        labels = None
        if samples.labels is not None and samples.labels.dtype.kind in "iu":
            labels = torch.from_numpy(samples.labels.astype(np.int64).reshape(-1))
        return cls(inputs, labels)

    def __len__(self) -> int:
        return len(self.inputs[0])

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[list, Any]]:
        """Shuffled ``(inputs, labels)`` batches covering the set once."""
        import torch

        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            idx = order[start : start + batch_size]
            labels = self.labels[idx] if self.labels is not None else None
            yield [x[idx] for x in self.inputs], labels


def outputs_of(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model's outputs, flattened in export order (see :func:`converter.reference.flatten_outputs`)."""
    from converter.reference import flatten_outputs

    return flatten_outputs(model(*inputs))[1]


def predict(model: torch.nn.Module, samples: SampleSet) -> list[np.ndarray]:
    """Outputs over a sample set, in chunks of :data:`EVAL_CHUNK` rows (one spec batch at a time
    when the model refuses other batch sizes)."""
    import torch

    arrays = [samples.arrays[s.name] for s in samples.specs]
    rows = len(arrays[0])
    was_training = model.training
    model.eval()
    chunk = EVAL_CHUNK
    try:
        with torch.inference_mode():
            try:
                parts = _chunks(model, arrays, rows, chunk)
            except RuntimeError:
                parts = _chunks(model, arrays, rows, samples.batch)
    finally:
        model.train(was_training)
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _chunks(
    model: torch.nn.Module, arrays: list[np.ndarray], rows: int, chunk: int
) -> list[list[np.ndarray]]:
    import torch

    parts = []
    for start in range(0, rows, chunk):
        feeds = [torch.from_numpy(np.ascontiguousarray(a[start : start + chunk])) for a in arrays]
        parts.append([t.detach().float().numpy() for t in outputs_of(model, feeds)])
    return parts


def accuracy_on(model: torch.nn.Module, samples: SampleSet | None) -> float | None:
    """Top-1 accuracy of the primary output, or ``None`` without labels."""
    from edgeship.contract.fidelity import accuracy

    if samples is None or samples.labels is None or samples.labels.dtype.kind not in "iu":
        return None
    return accuracy(predict(model, samples)[0], samples.labels)


def fit(
    model: torch.nn.Module,
    data: TrainingSet,
    loss_fn: Callable[[list[torch.Tensor], Any, int], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: Progress,
    label: str,
    eval_set: SampleSet | None = None,
    extra_parameters: list[torch.nn.Parameter] | None = None,
    on_epoch: Callable[[int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` with Adam and a cosine learning-rate decay; one progress line per epoch.

    Args:
        loss_fn: ``loss_fn(inputs, labels, epoch) -> scalar loss`` (it runs the model itself).
        on_epoch: called at the start of each epoch; what it returns is added to that epoch's
            history entry and progress line (e.g. the current temperature).
        extra_parameters: trained alongside the model (distillation adapters).

    Returns:
        One entry per epoch: ``epoch``, ``loss`` (mean over batches), ``eval_accuracy`` (when
        the eval set has labels) and whatever ``on_epoch`` returned.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters or [])
    optimizer = torch.optim.Adam(params, lr=lr)
    steps = epochs * max(1, -(-len(data) // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    history: list[dict[str, Any]] = []
    for epoch in range(epochs):
        extra = on_epoch(epoch) if on_epoch else {}
        model.train()
        total, count = 0.0, 0
        for inputs, labels in data.batches(batch_size, generator):
            optimizer.zero_grad()
            loss = loss_fn(inputs, labels, epoch)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(inputs[0])
            count += len(inputs[0])
        model.eval()
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": round(total / max(count, 1), 5), **extra}
        acc = accuracy_on(model, eval_set)
        if acc is not None:
            entry["eval_accuracy"] = round(acc, 5)
        history.append(entry)
        shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in entry.items() if k != "epoch")
        progress.say(f"{label}: epoch {epoch + 1}/{epochs}: {shown}")
    model.eval()
    return history


def frozen_outputs(teacher: torch.nn.Module) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """A function giving ``teacher``'s outputs (no gradients): the targets of label-free
    fine-tuning and of distillation."""
    import torch

    def run(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            return [o.detach() for o in outputs_of(teacher.eval(), inputs)]

    return run


def fine_tune_after(
    model: torch.nn.Module, teacher: torch.nn.Module, step: Any, env: Any
) -> list[dict[str, Any]]:
    """Fine-tune ``model`` after a pruning ``step`` when training data and epochs are given
    (the step's ``fine_tune_epochs``, else the recipe's); returns the per-epoch history."""
    epochs = env.training.fine_tune_epochs if step.fine_tune_epochs is None else step.fine_tune_epochs
    if env.train is None or epochs <= 0:
        return []
    return fine_tune(
        model, env.train, frozen_outputs(teacher), epochs=epochs, lr=env.training.fine_tune_lr,
        batch_size=env.training.batch_size, seed=env.training.seed, progress=env.progress,
        label=f"{step.label()} fine-tune", eval_set=env.eval_set,
    )


def fine_tune(
    model: torch.nn.Module,
    data: TrainingSet,
    teacher_outputs: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: Progress,
    label: str,
    eval_set: SampleSet | None = None,
) -> list[dict[str, Any]]:
    """Recover accuracy after pruning: cross-entropy on the labels, or, without labels, MSE to
    the outputs of the model before pruning (``teacher_outputs``)."""
    from torch.nn import functional

    def loss_fn(inputs: list, labels: Any, epoch: int):
        outputs = outputs_of(model, inputs)
        if labels is not None:
            return functional.cross_entropy(outputs[0].reshape(len(labels), -1), labels)
        if teacher_outputs is None:
            raise ValueError("fine-tuning without labels needs the unpruned model's outputs")
        targets = teacher_outputs(inputs)
        return sum(functional.mse_loss(o, t) for o, t in zip(outputs, targets, strict=True))

    return fit(model, data, loss_fn, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
               progress=progress, label=label, eval_set=eval_set)
