"""What a compression step gets besides the model: specs, example, data, settings, progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.compress.steps import Training
from converter.data import SampleSet
from converter.progress import Progress
from converter.specs import TensorSpec

if TYPE_CHECKING:
    import torch

    from converter.compress.training import TrainingSet


@dataclass
class StepEnv:
    """Inputs every step may use.

    Attributes:
        inputs: the model's input specs (positional order).
        example: one sample (arrays keyed by input name, shaped as the specs).
        train: training data (``--train``), or ``None``.
        eval_set: the evaluation set, for the per-epoch accuracy line (never for choices).
        training: epochs, learning rates, batch size and seed from the recipe.
        progress: progress lines.
    """

    inputs: list[TensorSpec]
    example: dict[str, np.ndarray]
    train: TrainingSet | None = None
    eval_set: SampleSet | None = None
    training: Training = field(default_factory=Training)
    progress: Progress = field(default_factory=lambda: Progress(quiet=True))

    def example_tensors(self) -> tuple[torch.Tensor, ...]:
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(self.example[s.name])) for s in self.inputs)

    def size_facts(self, model: torch.nn.Module) -> dict[str, Any]:
        """Parameters and MACs of one forward pass on the example."""
        from converter.reference import count_macs

        return {"params": sum(p.numel() for p in model.parameters()),
                "macs": count_macs(model, self.inputs, self.example)}


def weight_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Conv and Linear modules with a weight, in registration order."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and m.weight is not None]


def output_layers(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> list[str]:
    """The Conv/Linear layer that runs last in a forward pass: the classifier head.

    Found by running the example with forward hooks (registration order can differ from call
    order).
    """
    import torch

    order: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
             for name, m in weight_layers(model)]
    try:
        with torch.inference_mode():
            model(*example)
    finally:
        for hook in hooks:
            hook.remove()
    return order[-1:]
