"""Fidelity metrics of a variant's outputs against the PyTorch reference. Pure numpy."""

from __future__ import annotations

import numpy as np


def top1(outputs: np.ndarray) -> np.ndarray:
    """Arg-max class per row of the primary output, flattened to ``(rows, -1)``."""
    return outputs.reshape(len(outputs), -1).argmax(axis=1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((top1(outputs) == labels.reshape(-1)).mean())


def per_sample_cosine(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Cosine similarity per row over all outputs concatenated.

    1.0 where both rows are zero, 0.0 where only one is: a model that outputs zeros does not
    agree with a reference that does not.
    """
    flat_a = np.concatenate([x.reshape(len(x), -1).astype(np.float64) for x in a], axis=1)
    flat_b = np.concatenate([x.reshape(len(x), -1).astype(np.float64) for x in b], axis=1)
    dot = (flat_a * flat_b).sum(axis=1)
    norm_a, norm_b = np.linalg.norm(flat_a, axis=1), np.linalg.norm(flat_b, axis=1)
    norms = norm_a * norm_b
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    cos = np.where((norm_a == 0) & (norm_b == 0), 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


def fidelity(
    outputs: list[np.ndarray],
    reference: list[np.ndarray],
    classification: bool,
    agreement_cosine: float,
) -> dict[str, float]:
    """Agreement, max absolute error and mean cosine of ``outputs`` against ``reference``.

    Agreement is top-1 agreement for classification; otherwise the share of samples whose
    cosine similarity to the reference is at least ``agreement_cosine``.

    Raises:
        ValueError: output count or shapes differ from the reference.
    """
    if len(outputs) != len(reference):
        raise ValueError(f"variant has {len(outputs)} outputs, reference has {len(reference)}")
    for i, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
        if out.size != ref.size:
            raise ValueError(f"output {i}: shape {out.shape} differs from reference {ref.shape}")
    outputs = [o.reshape(r.shape) for o, r in zip(outputs, reference, strict=True)]
    cosine = per_sample_cosine(outputs, reference)
    if classification:
        agreement = float((top1(outputs[0]) == top1(reference[0])).mean())
    else:
        agreement = float((cosine >= agreement_cosine).mean())
    max_abs_err = max(
        float(np.abs(o.astype(np.float64) - r.astype(np.float64)).max()) if o.size else 0.0
        for o, r in zip(outputs, reference, strict=True)
    )
    if not all(np.isfinite(o).all() for o in outputs):
        max_abs_err = float("inf")
    return {"agreement": agreement, "max_abs_err": max_abs_err, "cosine": float(cosine.mean())}


def percentile_ms(latencies_ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies_ms), q)) if latencies_ms else float("nan")
