"""A wrapper that returns a model's outputs as a flat tuple of tensors.

``torch.jit.trace`` refuses dict outputs and Hugging Face models return ``ModelOutput``
(a dict); exporters that take the wrapper see the tensors in the order the reference run
(:func:`converter.reference.flatten_outputs`) names them. Imports torch: import it inside the
function that captures the model.
"""

from __future__ import annotations

import torch

from converter.reference import flatten_outputs


class FlatOutputs(torch.nn.Module):
    """``model(*args)`` flattened depth-first into a tuple of tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.model(*args))[1])
