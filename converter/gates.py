"""Apply a recipe's gates to a variant's measured metrics."""

from __future__ import annotations

from typing import Any

from converter.recipe import Gates


def gate_failures(metrics: dict[str, Any], gates: Gates, precision: str) -> list[str]:
    """Reasons the variant misses its gates (empty when it passes).

    Accuracy gates apply only when labels exist; the fp32 error gate only to fp32 variants.
    """
    failures: list[str] = []
    drop = metrics.get("accuracy_drop")
    if gates.max_accuracy_drop is not None and drop is not None and drop > gates.max_accuracy_drop:
        failures.append(
            f"accuracy drop {drop * 100:.2f} pts > {gates.max_accuracy_drop * 100:.2f} pts"
        )
    agreement = metrics.get("agreement")
    if gates.min_agreement is not None and agreement is not None and agreement < gates.min_agreement:
        failures.append(f"agreement {agreement:.2%} < {gates.min_agreement:.2%}")
    err = metrics.get("max_abs_err")
    if (
        precision == "fp32"
        and gates.max_abs_err_fp32 is not None
        and err is not None
        and not err <= gates.max_abs_err_fp32
    ):
        failures.append(f"fp32 max abs error {err:.2e} > {gates.max_abs_err_fp32:.0e}")
    cosine = metrics.get("cosine")
    if gates.min_cosine is not None and cosine is not None and cosine < gates.min_cosine:
        failures.append(f"cosine {cosine:.4f} < {gates.min_cosine}")
    size = metrics.get("size_bytes")
    if gates.max_size_bytes is not None and size is not None and size > gates.max_size_bytes:
        failures.append(f"size {size} B > {gates.max_size_bytes} B")
    p95 = (metrics.get("latency_ms") or {}).get("p95")
    if gates.max_latency_p95_ms is not None and p95 is not None and p95 > gates.max_latency_p95_ms:
        failures.append(f"latency p95 {p95:.2f} ms > {gates.max_latency_p95_ms} ms")
    return failures
