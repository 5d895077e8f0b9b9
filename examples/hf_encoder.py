"""A sentence encoder built from Hugging Face ``transformers`` classes (``BertModel``), trained
briefly on a synthetic task so its activations look trained, not random. No download.

The exported model is what a sentence-embedding model from the Hub is: ``forward(input_ids,
attention_mask)`` (two int64 inputs) → mean-pooled token states (``head="embedding"``), or
logits over the synthetic classes (``head="classifier"``). Sizes: ``tiny`` (0.2M parameters,
trains in ~15 s on one core; tests) and ``minilm-l6`` (all-MiniLM-L6-v2's layout, 22.7M;
benchmarks).

The task: each sequence draws most tokens from one of ``TOPICS`` topic vocabularies mixed with
common tokens, and holds one marker token in its first or second half; the class is
``2 * topic + (marker in the second half)``, so the encoder needs token identity and position.
:func:`plant_outliers` gives a trained encoder the outlier channels of a pretrained BERT
(int8 tests and the converter benchmark).

``python -m examples.hf_encoder --size tiny --out build/hf-encoder`` writes ``encoder.pt``,
``calib.npz`` and ``eval.npz`` (``input_ids``, ``attention_mask`` int64 N x seq_len; ``labels``
with ``head="classifier"`` only).
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

TOPICS = 4
CLASSES = 2 * TOPICS


@dataclass(frozen=True)
class EncoderSize:
    """A ``BertConfig`` layout and the training it gets."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    seq_len: int
    train_samples: int
    epochs: int
    lr: float

    @property
    def input_specs(self) -> tuple[str, str]:
        """Input specs for ``edgeship convert --input`` in ``forward``'s order."""
        return (f"input_ids:1x{self.seq_len}:int64", f"attention_mask:1x{self.seq_len}:int64")


SIZES: dict[str, EncoderSize] = {
    "tiny": EncoderSize(hidden=64, layers=2, heads=4, intermediate=256, vocab=1000, seq_len=32,
                        train_samples=2000, epochs=8, lr=2e-3),
    "minilm-l6": EncoderSize(hidden=384, layers=6, heads=12, intermediate=1536, vocab=30522,
                             seq_len=128, train_samples=1600, epochs=2, lr=5e-4),
}


class SentenceEncoder(nn.Module):
    """``transformers.BertModel`` + mean pooling over unmasked tokens (+ a linear classifier).

    Args:
        size: a key of :data:`SIZES` or an :class:`EncoderSize`.
        head: ``embedding`` (forward returns the pooled states) or ``classifier`` (logits).
        attn_implementation: ``sdpa`` (what ``from_pretrained`` picks by default) or ``eager``.
    """

    def __init__(self, size: str | EncoderSize = "tiny", head: str = "embedding",
                 attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        if head not in ("embedding", "classifier"):
            raise ValueError(f"head must be 'embedding' or 'classifier', got {head!r}")
        self.size = SIZES[size] if isinstance(size, str) else size
        self.head = head
        config = BertConfig(
            vocab_size=self.size.vocab, hidden_size=self.size.hidden,
            num_hidden_layers=self.size.layers, num_attention_heads=self.size.heads,
            intermediate_size=self.size.intermediate, max_position_embeddings=max(512, self.size.seq_len),
            attn_implementation=attn_implementation,
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(self.size.hidden, CLASSES)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.embed(input_ids, attention_mask)
        return pooled if self.head == "embedding" else self.classifier(pooled)


def synthetic_dataset(size: str | EncoderSize, count: int, seed: int) -> dict[str, np.ndarray]:
    """Token sequences of :data:`CLASSES` classes with random padding (token 0); see the module
    docstring. Ids 1-9 are reserved: 1 is [CLS], 2 the marker."""
    spec = SIZES[size] if isinstance(size, str) else size
    rng = np.random.default_rng(seed)
    seq = spec.seq_len
    topic = rng.integers(0, TOPICS, size=count)
    second_half = rng.integers(0, 2, size=count)
    words = spec.vocab - 10
    band = words // (TOPICS + 1)  # the last band is common to every topic
    topical = 10 + topic[:, None] * band + rng.integers(0, band, size=(count, seq))
    common = 10 + TOPICS * band + rng.integers(0, words - TOPICS * band, size=(count, seq))
    ids = np.where(rng.random((count, seq)) < 0.6, topical, common)
    lengths = rng.integers(seq // 2, seq + 1, size=count)
    half = lengths // 2
    marker_at = np.where(second_half == 1, half + rng.integers(0, np.maximum(1, lengths - half - 1)),
                         1 + rng.integers(0, np.maximum(1, half - 1)))
    ids[np.arange(count), marker_at] = 2
    ids[:, 0] = 1
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": (ids * mask).astype(np.int64), "attention_mask": mask,
            "labels": (2 * topic + second_half).astype(np.int64)}


def train(model: SentenceEncoder, data: dict[str, np.ndarray], epochs: int, seed: int = 0,
          batch: int = 32, lr: float = 1e-3) -> SentenceEncoder:
    """Cross-entropy on the classifier head (the embedding is what it reads), AdamW."""
    def loss(m: nn.Module, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = m.classifier(m.embed(rows["input_ids"], rows["attention_mask"]))
        return nn.functional.cross_entropy(logits, rows["labels"])

    names = ("input_ids", "attention_mask", "labels")
    return fit(model, tensors_of(data, names), loss, epochs, seed, batch, adamw(lr))


def trained_encoder(size: str = "tiny", head: str = "embedding", seed: int = 0,
                    attn_implementation: str = "sdpa", epochs: int | None = None) -> SentenceEncoder:
    """A :class:`SentenceEncoder` trained on :func:`synthetic_dataset` (seeded)."""
    spec = SIZES[size]
    torch.manual_seed(seed)
    model = SentenceEncoder(spec, head=head, attn_implementation=attn_implementation)
    data = synthetic_dataset(spec, spec.train_samples, seed)
    return train(model, data, epochs if epochs is not None else spec.epochs, seed=seed, lr=spec.lr)


def plant_outliers(model: SentenceEncoder, scale: float = 2000.0, channel: int = 0) -> SentenceEncoder:
    """Give every layer's attention output an outlier channel without changing the function.

    Pretrained BERTs carry a few activation channels far larger than the rest (Bondarenko et
    al., 2021), which is what breaks per-tensor int8 activations; brief training does not grow
    them. Value channel ``channel`` is scaled by ``scale`` and the output projection's matching
    input by ``1 / scale``, so outputs stay the same and the projection's input has one outlier.
    """
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            value, dense = layer.attention.self.value, layer.attention.output.dense
            value.weight[channel] *= scale
            value.bias[channel] *= scale
            dense.weight[:, channel] /= scale
    return model


def build_example(out: Path, size: str = "tiny", head: str = "embedding", seed: int = 0,
                  attn_implementation: str = "sdpa", epochs: int | None = None,
                  eval_count: int = 200, calib_count: int = 128) -> dict[str, float]:
    """Train and write ``encoder.pt``, ``calib.npz`` and ``eval.npz`` into ``out``.

    Returns:
        ``accuracy`` of the classifier head on the eval set, ``params`` and ``train_seconds``.
    """
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model = trained_encoder(size, head, seed, attn_implementation, epochs)
    seconds = time.monotonic() - started
    torch.save(model, out / "encoder.pt")
    calib = synthetic_dataset(size, calib_count, seed + 1)
    evaluation = synthetic_dataset(size, eval_count, seed + 2)
    keys = ("input_ids", "attention_mask") if head == "embedding" else tuple(evaluation)
    np.savez(out / "calib.npz", **{k: calib[k] for k in keys})
    np.savez(out / "eval.npz", **{k: evaluation[k] for k in keys})
    with torch.inference_mode():
        logits = model.classifier(model.embed(torch.from_numpy(evaluation["input_ids"]),
                                              torch.from_numpy(evaluation["attention_mask"])))
    accuracy = float((logits.argmax(1).numpy() == evaluation["labels"]).mean())
    return {"accuracy": accuracy, "params": sum(p.numel() for p in model.bert.parameters()),
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/hf-encoder"))
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--head", choices=("embedding", "classifier"), default="embedding")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    stats = build_example(args.out, args.size, args.head, epochs=args.epochs)
    print(f"hf encoder ({args.size}, {stats['params']:,} params): classifier accuracy "
          f"{stats['accuracy']:.4f} after {stats['train_seconds']}s; files in {args.out}")


if __name__ == "__main__":
    from examples import hf_encoder

    hf_encoder.main()
