"""Fidelity of a variant's outputs against the reference, measured as its task asks.

``cosine`` and ``max_abs_err`` are the contract's (:func:`edgeship.contract.fidelity.fidelity`:
mean per-sample cosine over all outputs concatenated); ``rel_err`` is the relative L2 error
``‖out − ref‖ / ‖ref‖`` over the eval set; ``agreement`` is top-1 agreement and only measured
for classifiers. A model with several outputs also gets ``outputs``: ``{name: {cosine,
rel_err, max_abs_err}}``, which the gates check one by one (a box head cannot hide behind a
good score head). Which keys a task keeps is :data:`converter.task.MEASURED`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from converter.task import MEASURED
from edgeship.contract import fidelity as fm


def task_fidelity(
    outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray], names: Sequence[str],
    task_kind: str, agreement_cosine: float,
) -> dict[str, Any]:
    """The fidelity metrics ``task_kind`` measures (see the module docstring).

    Raises:
        ValueError: output count or shapes differ from the reference.
    """
    base = fm.fidelity(list(outputs), list(reference), task_kind == "classification",
                       agreement_cosine)
    outputs = [o.reshape(r.shape) for o, r in zip(outputs, reference, strict=True)]
    measured = MEASURED[task_kind]
    result: dict[str, Any] = {"max_abs_err": base["max_abs_err"]}
    if "agreement" in measured:
        result["agreement"] = base["agreement"]
    if "cosine" in measured:
        result["cosine"] = base["cosine"]
    if "rel_err" in measured:
        result["rel_err"] = relative_error(outputs, reference)
    if len(outputs) > 1:
        result["outputs"] = {
            name: output_fidelity(o, r, measured)
            for name, o, r in zip(names, outputs, reference, strict=True)
        }
    return result


def output_fidelity(output: np.ndarray, reference: np.ndarray, measured: frozenset[str]) -> dict[str, float]:
    """One output's ``max_abs_err``, and ``rel_err`` and ``cosine`` when ``measured`` names
    them (cosine only with at least two values per sample: for scalars it is their sign)."""
    one = fm.fidelity([output], [reference], False, 0.99)
    found = {"max_abs_err": one["max_abs_err"]}
    if "rel_err" in measured:
        found["rel_err"] = relative_error([output], [reference])
    if "cosine" in measured and reference[0].size > 1:
        found["cosine"] = one["cosine"]
    return found


def relative_error(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """``‖out − ref‖₂ / ‖ref‖₂`` over every value of every output, in float64.

    0 when both are zero, inf when only the reference is (or an output is not finite).
    """
    err = sum(float(np.square(o.astype(np.float64) - r.astype(np.float64)).sum())
              for o, r in zip(outputs, reference, strict=True))
    norm = sum(float(np.square(r.astype(np.float64)).sum()) for r in reference)
    if not np.isfinite(err):
        return float("inf")
    if norm == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return float(np.sqrt(err / norm))
