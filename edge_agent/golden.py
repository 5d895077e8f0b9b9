"""The golden probe: a new model runs the release's probe set before it may be swapped in.

``golden.npz`` (written by the converter) holds ``input:<name>`` and ``output:<name>`` arrays,
samples on axis 0. The check compares the model's outputs with the reference outputs the same
way the converter measured the variant: top-1 agreement for classification, cosine agreement
otherwise. A variant passes when its on-device agreement is at least what the converter saw on
the same probe set minus a small slack (a different CPU may flip a borderline sample), and its
outputs are finite and of the right shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.contract.fidelity import fidelity

#: non-classification outputs agree when their cosine similarity is at least this.
AGREEMENT_COSINE = 0.99


@dataclass(frozen=True)
class GoldenResult:
    """Outcome of the probe.

    Attributes:
        passed: the model may be swapped in.
        agreement: on-device agreement with the reference outputs (0..1).
        required: the agreement it needed.
        max_abs_err: largest absolute difference to the reference outputs.
        reason: one line saying why it failed (empty when it passed).
    """

    passed: bool
    agreement: float
    required: float
    max_abs_err: float
    reason: str = ""


def load_golden(path: Path, input_names: list[str], output_names: list[str]) -> dict[str, Any]:
    """Read the probe set: ``{"inputs": {name: array}, "outputs": [array per output]}``.

    Raises:
        ValueError: an input or output the model needs is missing from the file.
    """
    with np.load(path, allow_pickle=False) as npz:
        missing = [f"input:{n}" for n in input_names if f"input:{n}" not in npz.files]
        missing += [f"output:{n}" for n in output_names if f"output:{n}" not in npz.files]
        if missing:
            raise ValueError(f"golden set {path.name} lacks {', '.join(missing)}")
        return {"inputs": {n: npz[f"input:{n}"] for n in input_names},
                "outputs": [npz[f"output:{n}"] for n in output_names]}


def run_probe(run, golden: dict[str, Any], batch: int) -> list[np.ndarray]:
    """Outputs of ``run(feeds)`` over the probe inputs, ``batch`` rows at a time, stacked."""
    inputs = golden["inputs"]
    rows = len(next(iter(inputs.values())))
    chunks: list[list[np.ndarray]] = []
    for start in range(0, rows - rows % batch, batch):
        chunks.append(run({n: a[start : start + batch] for n, a in inputs.items()}))
    return [np.concatenate([np.asarray(c[k]) for c in chunks]) for k in range(len(golden["outputs"]))]


def check_golden(outputs: list[np.ndarray], golden: dict[str, Any], classification: bool,
                 expected_agreement: float, slack: float) -> GoldenResult:
    """Compare probe outputs with the reference; see the module docstring for the rule."""
    reference = [r[: len(outputs[0])] for r in golden["outputs"]]
    required = max(0.0, min(1.0, expected_agreement) - slack)
    try:
        measured = fidelity(outputs, reference, classification, AGREEMENT_COSINE)
    except ValueError as err:
        return GoldenResult(False, 0.0, required, float("inf"), f"outputs do not match the reference: {err}")
    agreement, max_abs_err = measured["agreement"], measured["max_abs_err"]
    if not np.isfinite(max_abs_err):
        return GoldenResult(False, agreement, required, max_abs_err, "outputs hold NaN or Inf")
    if agreement < required:
        return GoldenResult(False, agreement, required, max_abs_err,
                            f"golden agreement {agreement:.3f} below the required {required:.3f}")
    return GoldenResult(True, agreement, required, max_abs_err)
