"""Example model: a small CNN trained in seconds on scikit-learn's bundled digits (8x8, 10 classes).

Real data, no download. ``python -m examples.digits --out build/digits`` trains the model and
writes what ``edgeship convert`` takes:

- ``digits_cnn.pt``: the trained module (``torch.save``), and ``weights.pt`` (state dict);
- ``calib.npz`` / ``eval.npz`` / ``train.npz``: arrays keyed ``image`` (N x 1 x 8 x 8, float32
  in [0, 1]) with ``labels``.

``examples.digits:trained_model`` is a factory for ``--model``: it loads ``weights.pt`` from
``$EDGESHIP_DIGITS_DIR`` (default ``build/digits``), training first when it is missing.
``examples.digits:student`` builds an untrained :class:`DigitsStudent` for ``distill`` steps.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from examples.training import fit, tensors_of

INPUT_SPEC = "image:1x1x8x8:float32"
DEFAULT_DIR = Path("build/digits")


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x3 with pooling, then a two-layer classifier head (about 26k parameters)."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 4, 64), nn.ReLU(), nn.Linear(64, classes)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


class DigitsStudent(nn.Module):
    """A small student for distillation: two narrow conv blocks and a linear head.

    At ``width=8`` it has 1,946 parameters, under a tenth of :class:`DigitsCNN`'s 23,114.
    """

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def load_split(seed: int = 0, test_fraction: float = 0.25):
    """Digits as ``(x_train, y_train, x_test, y_test)``; images scaled to [0, 1], NCHW."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 25, seed: int = 0,
          lr: float = 3e-3, batch_size: int = 64) -> nn.Module:
    """Train with Adam and cross-entropy; deterministic for a given seed."""
    def loss(m: nn.Module, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(rows["x"]), rows["y"])

    return fit(model, tensors_of({"x": x, "y": y}, ("x", "y")), loss, epochs, seed, batch_size,
               lambda params: torch.optim.Adam(params, lr=lr))


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def build_example(out: Path, epochs: int = 25, seed: int = 0) -> dict[str, float]:
    """Train the CNN and write the model files and the npz sets into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = load_split(seed)
    torch.manual_seed(seed)
    model = train(DigitsCNN(), x_tr, y_tr, epochs=epochs, seed=seed)
    torch.save(model.state_dict(), out / "weights.pt")
    torch.save(model, out / "digits_cnn.pt")
    np.savez(out / "train.npz", image=x_tr, labels=y_tr)
    np.savez(out / "calib.npz", image=x_tr[:200], labels=y_tr[:200])
    np.savez(out / "eval.npz", image=x_te, labels=y_te)
    return {"accuracy": evaluate(model, x_te, y_te), "train_samples": len(x_tr),
            "eval_samples": len(x_te)}


def trained_model() -> nn.Module:
    """Factory for ``edgeship convert --model examples.digits:trained_model``."""
    directory = Path(os.environ.get("EDGESHIP_DIGITS_DIR", DEFAULT_DIR))
    if not (directory / "weights.pt").exists():
        build_example(directory)
    model = DigitsCNN()
    model.load_state_dict(torch.load(directory / "weights.pt", weights_only=True))
    return model.eval()


def student() -> nn.Module:
    """Factory for a distillation student (untrained): ``student = "examples.digits:student"``."""
    return DigitsStudent()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args()
    stats = build_example(args.out, epochs=args.epochs)
    print(f"digits CNN: eval accuracy {stats['accuracy']:.4f} on {stats['eval_samples']} "
          f"held-out samples; files in {args.out}")


if __name__ == "__main__":
    # Run through the package so pickled classes are `examples.digits.DigitsCNN`, not `__main__`.
    from examples import digits

    digits.main()
