"""Apply a recipe's gates to a variant's measured metrics.

A gate checks only a metric that was measured: the metrics of a variant are the ones its task
measures (:mod:`converter.task`), so an embedding is never gated on top-1 agreement. With
several outputs, the cosine and relative-error gates check each output (``metrics["outputs"]``)
and name the one that misses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from converter.recipe import Gates


def gate_failures(
    metrics: dict[str, Any], gates: Gates, precision: str, compressed: bool = False
) -> list[str]:
    """Reasons the variant misses its gates (empty when it passes).

    Accuracy gates apply only when labels exist; the fp32 error gate only to fp32 variants.
    With ``compressed`` (the variant comes from a pruned/distilled/fused model) the fidelity
    gates (agreement, cosine, relative error, fp32 error) read ``metrics["export"]``, the export
    against the compressed PyTorch model, and ``min_source_agreement`` reads the agreement with
    the source.
    """
    failures: list[str] = []
    fidelity = metrics.get("export", {}) if compressed else metrics
    against = " with the compressed model" if compressed else ""
    drop = metrics.get("accuracy_drop")
    if gates.max_accuracy_drop is not None and drop is not None and drop > gates.max_accuracy_drop:
        failures.append(
            f"accuracy drop {drop * 100:.2f} pts > {gates.max_accuracy_drop * 100:.2f} pts"
        )
    agreement = fidelity.get("agreement")
    if gates.min_agreement is not None and agreement is not None and agreement < gates.min_agreement:
        failures.append(f"agreement{against} {agreement:.2%} < {gates.min_agreement:.2%}")
    source = metrics.get("agreement")
    if compressed and gates.min_source_agreement is not None and source is not None \
            and source < gates.min_source_agreement:
        failures.append(f"agreement with the source model {source:.2%} < "
                        f"{gates.min_source_agreement:.2%}")
    err = fidelity.get("max_abs_err")
    if "max_abs_err" in fidelity and err is None:  # recorded as null: not finite
        failures.append(f"outputs{against} hold NaN or Inf")
    if (
        precision == "fp32"
        and gates.max_abs_err_fp32 is not None
        and err is not None
        and not err <= gates.max_abs_err_fp32
    ):
        failures.append(f"fp32 max abs error{against} {err:.2e} > {gates.max_abs_err_fp32:.0e}")
    for where, values in per_output(fidelity):
        cosine = values.get("cosine")
        if gates.min_cosine is not None and cosine is not None and not cosine >= gates.min_cosine:
            failures.append(f"cosine{where}{against} {cosine:.4f} < {gates.min_cosine}")
        rel = values.get("rel_err")
        if gates.max_rel_err is not None and rel is not None and not rel <= gates.max_rel_err:
            failures.append(f"relative error{where}{against} {rel:.4f} > {gates.max_rel_err}")
    size = metrics.get("size_bytes")
    if gates.max_size_bytes is not None and size is not None and size > gates.max_size_bytes:
        failures.append(f"size {size} B > {gates.max_size_bytes} B")
    p95 = (metrics.get("latency_ms") or {}).get("p95")
    if gates.max_latency_p95_ms is not None and p95 is not None and p95 > gates.max_latency_p95_ms:
        failures.append(f"latency p95 {p95:.2f} ms > {gates.max_latency_p95_ms} ms")
    return failures


def per_output(fidelity: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(" of output 'name'", its metrics)`` per output when there are several, else
    ``("", the metrics)``: what the cosine and relative-error gates check."""
    outputs = fidelity.get("outputs")
    if outputs:
        for name, values in outputs.items():
            yield f" of output {name!r}", values
    else:
        yield "", fidelity


def gate_shortfall(
    metrics: dict[str, Any], gates: Gates, precision: str, compressed: bool = False
) -> float:
    """How far the metrics are from passing: 0 when every gate passes, larger is worse.

    Each missed gate adds its excess relative to its limit (a drop of 1.5 pts against 0.5 pts
    adds 2.0; agreement 97% against 99% adds 2.0 = 2 points over the 1 point allowed), so
    candidates that miss different gates can be ranked. Unmeasured metrics count as 1e9.
    """
    if not metrics:
        return 1e9
    fidelity = metrics.get("export", {}) if compressed else metrics
    total = 0.0

    def excess(value: float | None, limit: float | None, higher_is_better: bool, span: float) -> float:
        if value is None or limit is None:
            return 0.0
        gap = (limit - value) if higher_is_better else (value - limit)
        return max(0.0, gap) / max(span, 1e-12)

    drop_limit = gates.max_accuracy_drop
    total += excess(metrics.get("accuracy_drop"), drop_limit, False, drop_limit or 1.0)
    agree_limit = gates.min_agreement
    total += excess(fidelity.get("agreement"), agree_limit, True, 1 - (agree_limit or 0.0))
    if compressed:
        src = gates.min_source_agreement
        total += excess(metrics.get("agreement"), src, True, 1 - (src or 0.0))
    if precision == "fp32":
        total += excess(fidelity.get("max_abs_err"), gates.max_abs_err_fp32, False,
                        gates.max_abs_err_fp32 or 1.0)
    for _, values in per_output(fidelity):
        total += excess(values.get("cosine"), gates.min_cosine, True, 1 - (gates.min_cosine or 0.0))
        total += excess(values.get("rel_err"), gates.max_rel_err, False, gates.max_rel_err or 1.0)
    total += excess(metrics.get("size_bytes"), gates.max_size_bytes, False,
                    float(gates.max_size_bytes or 1))
    p95 = (metrics.get("latency_ms") or {}).get("p95")
    total += excess(p95, gates.max_latency_p95_ms, False, gates.max_latency_p95_ms or 1.0)
    return round(min(total, 1e9), 6)
