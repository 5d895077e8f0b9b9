"""The digits CNN made hard for int8: two activation channels 1000x larger, function unchanged.

Large language and vision models often have a few activation channels far larger than the
rest. Per-tensor int8 activations then spend their 256 levels on those channels and round the
others to zero. :func:`with_outlier_channels` reproduces this on the trained digits CNN without
changing what it computes: the second BatchNorm's scale and shift of a few channels are
multiplied by ``scale`` (ReLU and max-pooling commute with a positive scale) and the next
convolution's weights for those input channels divided by it. Static int8 with min/max
calibration collapses on it (about 10% accuracy), while keeping the two layers around the
outlier tensor in float recovers the float accuracy.

``examples.outlier:trained_model`` is a ``--model`` factory (weights from
``$EDGESHIP_DIGITS_DIR``, default ``build/digits``, trained first when missing).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from examples.digits import DEFAULT_DIR, DigitsCNN, build_example

OUTLIER_CHANNELS = (3, 11)
OUTLIER_SCALE = 1000.0


def with_outlier_channels(
    model: DigitsCNN, channels: tuple[int, ...] = OUTLIER_CHANNELS, scale: float = OUTLIER_SCALE
) -> DigitsCNN:
    """Scale the given channels after the second conv block by ``scale``; outputs unchanged.

    Args:
        model: a :class:`~examples.digits.DigitsCNN` (modified in place and returned).
        channels: channels of the second block's output to blow up.
        scale: positive factor.
    """
    bn, next_conv = model.features[4], model.features[7]
    with torch.no_grad():
        for k in channels:
            bn.weight[k] *= scale
            bn.bias[k] *= scale
            next_conv.weight[:, k] /= scale
    return model.eval()


def trained_model() -> DigitsCNN:
    """Factory for ``edgeship convert --model examples.outlier:trained_model``."""
    directory = Path(os.environ.get("EDGESHIP_DIGITS_DIR", DEFAULT_DIR))
    if not (directory / "weights.pt").exists():
        build_example(directory)
    model = DigitsCNN()
    model.load_state_dict(torch.load(directory / "weights.pt", weights_only=True))
    return with_outlier_channels(model)
