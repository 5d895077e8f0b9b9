"""The one training loop the example models share: seeded, shuffled mini-batches, one loss.

Each example differs only in its data and its loss (classification, next-token, an embedding's
classifier head); the loop, the seeding and the batch order are the same, so a given seed gives
the same model whichever example trains it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

#: ``loss(model, batch)`` where ``batch`` holds the rows of every tensor for one mini-batch.
Loss = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def fit(model: nn.Module, tensors: dict[str, torch.Tensor], loss: Loss, epochs: int, seed: int = 0,
        batch: int = 32, optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        ) -> nn.Module:
    """Train ``model`` for ``epochs`` passes over ``tensors`` (rows along axis 0) and return it in eval mode.

    ``optimizer`` defaults to AdamW (lr 1e-3, weight decay 0.01). Deterministic for a given seed.
    """
    torch.manual_seed(seed)
    opt = (optimizer or adamw(1e-3))(model.parameters())
    rows = len(next(iter(tensors.values())))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(rows)
        for start in range(0, rows, batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss(model, {name: t[idx] for name, t in tensors.items()}).backward()
            opt.step()
    return model.eval()


def adamw(lr: float) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    """AdamW at ``lr`` with weight decay 0.01 (the examples' optimizer)."""
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def tensors_of(data: dict, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """``{name: torch tensor}`` for the numpy arrays ``data[name]``."""
    return {name: torch.from_numpy(data[name]) for name in names}
