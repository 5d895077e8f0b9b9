"""A small vision transformer built from Hugging Face ``transformers`` classes
(``ViTForImageClassification``), trained briefly on a synthetic task so its activations look
trained, not random. No download.

``forward(pixel_values)`` (float32 ``1x3xSxS``) → logits over :data:`CLASSES` classes, the
interface of an image classifier from the Hub. Sizes: ``tiny`` (~0.1M parameters, trains in
a few seconds; tests) and ``small`` (ViT-Tiny's width on 64x64 images, ~5M).

The task: a bright square on a noisy background; the class is the quadrant it lies in times
the colour channel it is drawn in (red or green), so the model needs position and colour.

``python -m examples.hf_vision --out build/hf-vision`` writes ``vit.pt``, ``calib.npz`` and
``eval.npz`` (``pixel_values`` float32 N x 3 x S x S, ``labels``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from examples.training import adamw, fit, tensors_of

QUADRANTS, COLOURS = 4, 2
CLASSES = QUADRANTS * COLOURS


@dataclass(frozen=True)
class VisionSize:
    """A ``ViTConfig`` layout and the training it gets."""

    image: int
    patch: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    train_samples: int
    epochs: int

    @property
    def input_specs(self) -> tuple[str]:
        """Input spec for ``edgeship convert --input``."""
        return (f"pixel_values:1x3x{self.image}x{self.image}:float32",)


SIZES: dict[str, VisionSize] = {
    "tiny": VisionSize(image=32, patch=8, hidden=64, layers=2, heads=4, intermediate=128,
                       train_samples=1500, epochs=15),
    "small": VisionSize(image=64, patch=8, hidden=192, layers=12, heads=3, intermediate=768,
                        train_samples=3000, epochs=8),
}


class VisionClassifier(nn.Module):
    """``transformers.ViTForImageClassification`` returning its logits tensor.

    Args:
        size: a key of :data:`SIZES` or a :class:`VisionSize`.
        attn_implementation: ``sdpa`` (what ``from_pretrained`` picks by default) or ``eager``.
    """

    def __init__(self, size: str | VisionSize = "tiny", attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        self.size = SIZES[size] if isinstance(size, str) else size
        config = ViTConfig(
            image_size=self.size.image, patch_size=self.size.patch, num_channels=3,
            hidden_size=self.size.hidden, num_hidden_layers=self.size.layers,
            num_attention_heads=self.size.heads, intermediate_size=self.size.intermediate,
            num_labels=CLASSES, attn_implementation=attn_implementation,
        )
        self.vit = ViTForImageClassification(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=pixel_values).logits


def synthetic_dataset(size: str | VisionSize, count: int, seed: int) -> dict[str, np.ndarray]:
    """Noisy images with one bright square; label = quadrant * 2 + colour (see the docstring)."""
    spec = SIZES[size] if isinstance(size, str) else size
    rng = np.random.default_rng(seed)
    s = spec.image
    images = rng.normal(0.0, 0.3, size=(count, 3, s, s)).astype(np.float32)
    quadrant = rng.integers(0, QUADRANTS, size=count)
    colour = rng.integers(0, COLOURS, size=count)
    side = s // 4
    for i in range(count):
        top = (quadrant[i] // 2) * (s // 2) + rng.integers(0, s // 2 - side + 1)
        left = (quadrant[i] % 2) * (s // 2) + rng.integers(0, s // 2 - side + 1)
        images[i, colour[i], top : top + side, left : left + side] += 2.0
    return {"pixel_values": images, "labels": (quadrant * COLOURS + colour).astype(np.int64)}


def train(model: VisionClassifier, data: dict[str, np.ndarray], epochs: int, seed: int = 0,
          batch: int = 32, lr: float = 1e-3) -> VisionClassifier:
    """Cross-entropy, AdamW, seeded."""
    def loss(m: nn.Module, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(rows["pixel_values"]), rows["labels"])

    return fit(model, tensors_of(data, ("pixel_values", "labels")), loss, epochs, seed, batch, adamw(lr))


def trained_vit(size: str = "tiny", seed: int = 0, attn_implementation: str = "sdpa",
                epochs: int | None = None) -> VisionClassifier:
    """A :class:`VisionClassifier` trained on :func:`synthetic_dataset` (seeded)."""
    spec = SIZES[size]
    torch.manual_seed(seed)
    model = VisionClassifier(spec, attn_implementation)
    data = synthetic_dataset(spec, spec.train_samples, seed)
    return train(model, data, epochs if epochs is not None else spec.epochs, seed=seed)


def build_example(out: Path, size: str = "tiny", seed: int = 0, epochs: int | None = None,
                  eval_count: int = 200, calib_count: int = 64) -> dict[str, float]:
    """Train and write ``vit.pt``, ``calib.npz`` and ``eval.npz`` into ``out``.

    Returns:
        ``accuracy`` on the eval set, ``params`` and ``train_seconds``.
    """
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model = trained_vit(size, seed, epochs=epochs)
    seconds = time.monotonic() - started
    torch.save(model, out / "vit.pt")
    calib = synthetic_dataset(size, calib_count, seed + 1)
    evaluation = synthetic_dataset(size, eval_count, seed + 2)
    np.savez(out / "calib.npz", pixel_values=calib["pixel_values"])
    np.savez(out / "eval.npz", **evaluation)
    with torch.inference_mode():
        logits = model(torch.from_numpy(evaluation["pixel_values"]))
    accuracy = float((logits.argmax(1).numpy() == evaluation["labels"]).mean())
    return {"accuracy": accuracy, "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/hf-vision"))
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    stats = build_example(args.out, args.size, epochs=args.epochs)
    print(f"hf vit ({args.size}, {stats['params']:,} params): accuracy {stats['accuracy']:.4f} "
          f"after {stats['train_seconds']}s; files in {args.out}")


if __name__ == "__main__":
    from examples import hf_vision

    hf_vision.main()
