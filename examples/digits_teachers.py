"""Extra distillation teachers for the digits example: ``teachers = ["examples.digits_teachers:wide"]``.

``wide`` is :class:`~examples.digits.DigitsCNN` at twice the width (about 90k parameters),
trained with another seed, so it errs on other samples than the model it joins as a teacher.
Its weights are cached next to the digits files (``$EDGESHIP_DIGITS_DIR``, default
``build/digits``) and trained on first use (a few seconds).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from examples.digits import DEFAULT_DIR, DigitsCNN, load_split, train

WIDE_WIDTH = 32
WIDE_SEED = 1


def wide() -> nn.Module:
    """Factory: the wide digits CNN, trained (cached as ``wide_weights.pt``)."""
    directory = Path(os.environ.get("EDGESHIP_DIGITS_DIR", DEFAULT_DIR))
    path = directory / "wide_weights.pt"
    model = DigitsCNN(width=WIDE_WIDTH)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x_tr, y_tr, _, _ = load_split()
    torch.manual_seed(WIDE_SEED)
    model = train(DigitsCNN(width=WIDE_WIDTH), x_tr, y_tr, epochs=15, seed=WIDE_SEED)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()
