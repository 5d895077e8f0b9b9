"""A small decoder-only language model built from Hugging Face ``transformers`` classes
(``LlamaForCausalLM``: rotary positions, RMSNorm, grouped-query attention, SwiGLU), trained
briefly on a synthetic language so its activations look trained, not random. No download.

It runs as a fixed-length forward pass: ``forward(input_ids)`` (int64 ``1xT``) → next-token
logits ``1xTxV`` for every position, no KV cache (what an on-device scorer or a prefill step
runs). Sizes: ``tiny`` (~0.1M parameters, trains in seconds; tests) and ``small`` (~6M).

The language: each sequence counts up from a random start by a step of 1, 2 or 3 (mod the
counting range), with a step marker token first, so the next token follows from the marker
and the previous token.

``python -m examples.hf_decoder --out build/hf-decoder`` writes ``decoder.pt``, ``calib.npz``
and ``eval.npz`` (``input_ids`` int64 N x T).
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

STEPS = (1, 2, 3)
#: ids 0..len(STEPS)-1 are the step markers; counting tokens follow them.
FIRST_WORD = len(STEPS)


@dataclass(frozen=True)
class DecoderSize:
    """A ``LlamaConfig`` layout and the training it gets."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq_len: int
    train_samples: int
    epochs: int

    @property
    def input_specs(self) -> tuple[str]:
        """Input spec for ``edgeship convert --input``."""
        return (f"input_ids:1x{self.seq_len}:int64",)


SIZES: dict[str, DecoderSize] = {
    "tiny": DecoderSize(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=64,
                        seq_len=32, train_samples=1500, epochs=3),
    "small": DecoderSize(hidden=256, layers=6, heads=8, kv_heads=4, intermediate=688, vocab=2048,
                         seq_len=128, train_samples=3000, epochs=2),
}


class DecoderLM(nn.Module):
    """``transformers.LlamaForCausalLM`` without cache, returning its logits tensor.

    Args:
        size: a key of :data:`SIZES` or a :class:`DecoderSize`.
        attn_implementation: ``sdpa`` (what ``from_pretrained`` picks by default) or ``eager``.
    """

    def __init__(self, size: str | DecoderSize = "tiny", attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.size = SIZES[size] if isinstance(size, str) else size
        config = LlamaConfig(
            vocab_size=self.size.vocab, hidden_size=self.size.hidden,
            intermediate_size=self.size.intermediate, num_hidden_layers=self.size.layers,
            num_attention_heads=self.size.heads, num_key_value_heads=self.size.kv_heads,
            max_position_embeddings=max(128, self.size.seq_len), use_cache=False,
            attn_implementation=attn_implementation,
        )
        self.lm = LlamaForCausalLM(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def synthetic_dataset(size: str | DecoderSize, count: int, seed: int) -> dict[str, np.ndarray]:
    """Counting sequences (see the module docstring): ``input_ids`` int64 ``count x T``."""
    spec = SIZES[size] if isinstance(size, str) else size
    rng = np.random.default_rng(seed)
    words = spec.vocab - FIRST_WORD
    step = rng.integers(0, len(STEPS), size=count)
    start = rng.integers(0, words, size=count)
    offsets = np.arange(spec.seq_len - 1)[None, :] * np.asarray(STEPS)[step][:, None]
    counting = FIRST_WORD + (start[:, None] + offsets) % words
    ids = np.concatenate([step[:, None], counting], axis=1)
    return {"input_ids": ids.astype(np.int64)}


def train(model: DecoderLM, data: dict[str, np.ndarray], epochs: int, seed: int = 0,
          batch: int = 32, lr: float = 2e-3) -> DecoderLM:
    """Next-token cross-entropy, AdamW, seeded."""
    def loss(m: nn.Module, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        chunk = rows["input_ids"]
        logits = m(chunk)[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))

    return fit(model, tensors_of(data, ("input_ids",)), loss, epochs, seed, batch, adamw(lr))


def next_token_accuracy(model: DecoderLM, ids: np.ndarray) -> float:
    """Share of positions after the first counting token whose arg-max is the next token."""
    with torch.inference_mode():
        logits = model(torch.from_numpy(ids))
    predicted = logits[:, 1:-1].argmax(-1).numpy()
    return float((predicted == ids[:, 2:]).mean())


def trained_decoder(size: str = "tiny", seed: int = 0, attn_implementation: str = "sdpa",
                    epochs: int | None = None) -> DecoderLM:
    """A :class:`DecoderLM` trained on :func:`synthetic_dataset` (seeded)."""
    spec = SIZES[size]
    torch.manual_seed(seed)
    model = DecoderLM(spec, attn_implementation)
    data = synthetic_dataset(spec, spec.train_samples, seed)
    return train(model, data, epochs if epochs is not None else spec.epochs, seed=seed)


def build_example(out: Path, size: str = "tiny", seed: int = 0, epochs: int | None = None,
                  eval_count: int = 100, calib_count: int = 64) -> dict[str, float]:
    """Train and write ``decoder.pt``, ``calib.npz`` and ``eval.npz`` into ``out``.

    Returns:
        ``next_token_accuracy`` on the eval set, ``params`` and ``train_seconds``.
    """
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model = trained_decoder(size, seed, epochs=epochs)
    seconds = time.monotonic() - started
    torch.save(model, out / "decoder.pt")
    calib = synthetic_dataset(size, calib_count, seed + 1)
    evaluation = synthetic_dataset(size, eval_count, seed + 2)
    np.savez(out / "calib.npz", **calib)
    np.savez(out / "eval.npz", **evaluation)
    return {"next_token_accuracy": next_token_accuracy(model, evaluation["input_ids"]),
            "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/hf-decoder"))
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    stats = build_example(args.out, args.size, epochs=args.epochs)
    print(f"hf decoder ({args.size}, {stats['params']:,} params): next-token accuracy "
          f"{stats['next_token_accuracy']:.4f} after {stats['train_seconds']}s; files in {args.out}")


if __name__ == "__main__":
    from examples import hf_decoder

    hf_decoder.main()
