"""Two larger vision models (over 1M parameters each) for benchmarks, trained on digits at 32x32.

``MobileNetV2Style``: inverted residual blocks with depthwise convolutions and ReLU6.
``ResNetStyle``: basic residual blocks (ResNet-18 layout, narrower).
``digits32`` upsamples scikit-learn's 8x8 digits to 32x32 so both train on real data in
seconds to a minute on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from examples.digits import load_split


def digits32(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits split as in :func:`examples.digits.load_split`, images bilinearly resized to 32x32."""
    x_tr, y_tr, x_te, y_te = load_split(seed)

    def up(x: np.ndarray) -> np.ndarray:
        resized = nn.functional.interpolate(torch.from_numpy(x), size=32, mode="bilinear",
                                            align_corners=False)
        return resized.numpy().astype(np.float32)

    return up(x_tr), y_tr, up(x_te), y_te


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_skip else self.block(x)


class MobileNetV2Style(nn.Module):
    """MobileNetV2 layout for 32x32 inputs (strides trimmed), about 2.2M parameters."""

    #: expansion, output channels, repeats, first stride
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, in_channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, 1)]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
                                        nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride, act=nn.ReLU),
                                  _conv_bn(cout, cout, 3, 1, act=None))
        self.skip = (nn.Identity() if stride == 1 and cin == cout
                     else _conv_bn(cin, cout, 1, stride, act=None))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.skip(x))


class ResNetStyle(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks) at base width 24, about 1.6M parameters."""

    def __init__(self, in_channels: int = 1, classes: int = 10, width: int = 24) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, width, 3, 1, act=nn.ReLU)]
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for i in range(2):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
