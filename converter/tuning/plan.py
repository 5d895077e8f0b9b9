"""What the tuner tries, in order, and how it picks: pure functions, no I/O.

Order (the issue's, and what an engineer would do by hand):

1. the other calibration methods with the requested weight granularity, then every method
   with per-channel weights switched (ONNX: minmax / entropy / percentile; TFLite: minmax /
   moving-average);
2. with the best of those, keep the most sensitive layers in float, adding one at a time.

The first attempt that passes its gates wins. When none does, the closest one (smallest
:func:`~converter.gates.gate_shortfall`) is kept and reported as failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: calibration methods per tunable kind.
CALIBRATIONS: dict[str, tuple[str, ...]] = {
    "onnx-int8-static": ("minmax", "entropy", "percentile"),
    "tflite-int8": ("minmax", "moving-average"),
}
TUNABLE = tuple(CALIBRATIONS)


@dataclass(frozen=True)
class Candidate:
    """One attempt's quantization settings."""

    calibration: str
    per_channel: bool
    float_layers: tuple[str, ...] = ()

    def options(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "per_channel": self.per_channel,
                "float_layers": list(self.float_layers)}

    def describe(self) -> str:
        text = f"{self.calibration}, {'per-channel' if self.per_channel else 'per-tensor'}"
        if self.float_layers:
            text += f", {len(self.float_layers)} float layer{'s' if len(self.float_layers) > 1 else ''}"
        return text


def requested(kind: str, options: dict[str, Any]) -> Candidate:
    """The candidate the recipe asked for."""
    return Candidate(str(options.get("calibration", CALIBRATIONS[kind][0])),
                     bool(options.get("per_channel", True)),
                     tuple(options.get("float_layers") or ()))


def calibration_candidates(kind: str, first: Candidate) -> list[Candidate]:
    """Step 1: other methods at the requested granularity, then all with it switched."""
    methods = CALIBRATIONS[kind]
    same = [Candidate(m, first.per_channel, first.float_layers) for m in methods if m != first.calibration]
    flipped = [Candidate(m, not first.per_channel, first.float_layers) for m in methods]
    return same + flipped


def float_layer_candidates(best: Candidate, ranked_layers: list[str], limit: int) -> list[Candidate]:
    """Step 2: the best settings with the 1, 2, ... most sensitive layers kept in float."""
    layers = [name for name in ranked_layers if name not in best.float_layers]
    return [Candidate(best.calibration, best.per_channel, (*best.float_layers, *layers[:k]))
            for k in range(1, min(limit, len(layers)) + 1)]

