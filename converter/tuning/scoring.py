"""How much a partly quantized model's outputs differ from the float model's (pure numpy)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: whether a partly quantized model's outputs (on the sensitivity samples) would pass.
Accept = Callable[[list[np.ndarray]], bool]


def output_error(outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """``score``: relative squared error ``Σ‖o − r‖² / Σ‖r‖²`` over all outputs (0 is exact; 4
    significant digits, so small errors still rank);
    ``agreement``: top-1 agreement of the first output with the reference's.

    Raises:
        ValueError: different numbers of outputs.
    """
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} outputs against {len(reference)} in the reference")
    noise = sum(float(np.sum((o.astype(np.float64).reshape(r.shape) - r) ** 2))
                for o, r in zip(outputs, reference, strict=True))
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    first, ref = outputs[0].reshape(len(reference[0]), -1), reference[0].reshape(len(reference[0]), -1)
    agreement = float((first.argmax(axis=1) == ref.argmax(axis=1)).mean())
    score = noise / signal if signal > 0 else noise
    if not np.isfinite(score):
        score = 1e9
    return {"score": float(f"{score:.4g}"), "agreement": round(agreement, 4)}
