"""Example model with integer inputs: a tiny BERT-style encoder (token ids + attention mask).

Embeddings (token + position), two pre-norm transformer blocks with masked softmax attention
and GELU, mean pooling over unmasked tokens, and a classifier. It is trained in seconds on a
synthetic but learnable task: does the unpadded part of the sequence hold more "low" tokens
(id < VOCAB/2) than "high" ones?

``python -m examples.tiny_bert --out build/tiny-bert`` writes ``tiny_bert.pt``, ``calib.npz``
and ``eval.npz`` (``input_ids``, ``attention_mask`` int64 of shape N x SEQ_LEN, ``labels``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from examples.training import adamw, fit, tensors_of

VOCAB, SEQ_LEN = 128, 16
INPUT_SPECS = (f"input_ids:1x{SEQ_LEN}:int64", f"attention_mask:1x{SEQ_LEN}:int64")


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class TinyBert(nn.Module):
    """About 110k parameters; ``forward(input_ids, attention_mask) -> logits``."""

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, dim)
        self.positions = nn.Embedding(SEQ_LEN, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, classes)
        self.register_buffer("position_ids", torch.arange(SEQ_LEN)[None, :], persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.positions(self.position_ids)
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * -1e4
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.classifier(pooled)


def synthetic_dataset(count: int, seed: int) -> dict[str, np.ndarray]:
    """Random token sequences with random padding; label 1 when low tokens outnumber high."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(count, SEQ_LEN))
    lengths = rng.integers(SEQ_LEN // 2, SEQ_LEN + 1, size=count)
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask  # padding token 0
    low = ((ids < VOCAB // 2) & (mask == 1)).sum(1)
    labels = (low * 2 > lengths).astype(np.int64)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "labels": labels}


def train(model: TinyBert, data: dict[str, np.ndarray], epochs: int = 6, seed: int = 0) -> TinyBert:
    def loss(m: nn.Module, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(rows["input_ids"], rows["attention_mask"]), rows["labels"])

    names = ("input_ids", "attention_mask", "labels")
    return fit(model, tensors_of(data, names), loss, epochs, seed, batch=64, optimizer=adamw(2e-3))


def build_example(out: Path, epochs: int = 6, seed: int = 0) -> dict[str, float]:
    """Train and write ``tiny_bert.pt``, ``calib.npz`` and ``eval.npz`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = train(TinyBert(), synthetic_dataset(3000, seed), epochs=epochs, seed=seed)
    torch.save(model, out / "tiny_bert.pt")
    np.savez(out / "calib.npz", **synthetic_dataset(128, seed + 1))
    evaluation = synthetic_dataset(300, seed + 2)
    np.savez(out / "eval.npz", **evaluation)
    with torch.inference_mode():
        logits = model(torch.from_numpy(evaluation["input_ids"]),
                       torch.from_numpy(evaluation["attention_mask"]))
    return {"accuracy": float((logits.argmax(1).numpy() == evaluation["labels"]).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/tiny-bert"))
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    stats = build_example(args.out, epochs=args.epochs)
    print(f"tiny BERT: eval accuracy {stats['accuracy']:.4f}; files in {args.out}")


if __name__ == "__main__":
    from examples import tiny_bert

    tiny_bert.main()
