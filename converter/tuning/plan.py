"""What the tuner tries, in order, and how it picks: pure functions, no I/O.

Order (the issue's, and what an engineer would do by hand):

1. the other calibration methods with the requested weight granularity, then every method
   with per-channel weights switched (ONNX: minmax / entropy / percentile; TFLite: minmax /
   moving-average); a dynamic kind has no calibration: per-channel weights if it asked for
   per-tensor;
2. with the best of those, keep the most sensitive layers in float, adding one at a time
   (from the count the sensitivity run predicts to pass, when it predicts one); for the kinds
   NNCF quantizes (``openvino-int8``) NNCF's accuracy control does this step instead: it ranks
   and reverts layers itself under the gate's drop, and step 1 keeps the requested granularity.

The first attempt that passes its gates wins. When none does, the closest one (smallest
:func:`~converter.gates.gate_shortfall`) is kept and reported as failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: calibration methods per tunable kind (none for the dynamic kinds).
CALIBRATIONS: dict[str, tuple[str, ...]] = {
    "onnx-int8-static": ("minmax", "entropy", "percentile"),
    "tflite-int8": ("minmax", "moving-average"),
    "onnx-int8-dynamic": (),
    "tflite-int8-dynamic": (),
    "openvino-int8": ("default", "minmax", "mean-quantile"),
}
TUNABLE = tuple(CALIBRATIONS)
#: kinds whose step 2 is NNCF's accuracy-controlled quantization.
ACCURACY_CONTROL_KINDS = ("openvino-int8",)


@dataclass(frozen=True)
class Candidate:
    """One attempt's quantization settings (``calibration`` is ``None`` for dynamic kinds)."""

    calibration: str | None
    per_channel: bool
    float_layers: tuple[str, ...] = ()
    accuracy_control: bool = False

    def options(self) -> dict[str, Any]:
        calibration = {"calibration": self.calibration} if self.calibration else {}
        control = {"accuracy_control": True} if self.accuracy_control else {}
        return {**calibration, "per_channel": self.per_channel, "float_layers": list(self.float_layers),
                **control}

    def describe(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        text = f"{self.calibration}, {granularity}" if self.calibration else granularity
        if self.float_layers:
            text += f", {len(self.float_layers)} float layer{'s' if len(self.float_layers) > 1 else ''}"
        if self.accuracy_control:
            text += ", NNCF accuracy control"
        return text


def requested(kind: str, options: dict[str, Any]) -> Candidate:
    """The candidate the recipe asked for."""
    methods = CALIBRATIONS[kind]
    return Candidate(str(options.get("calibration", methods[0])) if methods else None,
                     bool(options.get("per_channel", True)),
                     tuple(options.get("float_layers") or ()))


def calibration_candidates(kind: str, first: Candidate) -> list[Candidate]:
    """Step 1: other methods at the requested granularity, then all with it switched; for a
    dynamic kind, per-channel weights when it asked for per-tensor."""
    methods = CALIBRATIONS[kind]
    if not methods:
        return [] if first.per_channel else [Candidate(None, True, first.float_layers)]
    same = [Candidate(m, first.per_channel, first.float_layers) for m in methods if m != first.calibration]
    if kind in ACCURACY_CONTROL_KINDS:
        return same
    flipped = [Candidate(m, not first.per_channel, first.float_layers) for m in methods]
    return same + flipped


def float_layer_candidates(best: Candidate, ranked_layers: list[str], limit: int,
                           first: int = 1) -> list[Candidate]:
    """Step 2: the best settings with the ``first``, ``first + 1``, ... most sensitive layers
    kept in float, up to ``limit``."""
    layers = [name for name in ranked_layers if name not in best.float_layers]
    return [Candidate(best.calibration, best.per_channel, (*best.float_layers, *layers[:k]))
            for k in range(max(1, first), min(limit, len(layers)) + 1)]


def accuracy_control_candidate(best: Candidate) -> Candidate:
    """Step 2 for :data:`ACCURACY_CONTROL_KINDS`: the best settings under NNCF accuracy control."""
    return Candidate(best.calibration, best.per_channel, best.float_layers, accuracy_control=True)
