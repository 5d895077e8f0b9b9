"""The device report (``POST /v1/reports``): error reasons, cohorts and limits, defined once.

A device counts inferences, errors by reason and latencies (in a sketch of
:mod:`edgeship.contract.sketch`; schema-1 reports of older agents carry the histogram of
:mod:`edgeship.contract.latency` instead) per window and sends one report per (model, version,
variant, rollout, cohort). The agent fills these fields, the server checks them, the rollout
guards and the dashboards read them; docs/protocol.md gives every field.
"""

from __future__ import annotations

#: errors that end one inference: each counts as an inference, without a latency sample.
INFERENCE_ERROR_REASONS: tuple[str, ...] = ("runtime_error", "timeout", "other")
#: errors of an install (loading the model, checking it on the golden set): no inference ran.
INSTALL_ERROR_REASONS: tuple[str, ...] = ("load_failed", "golden_mismatch")
#: every reason a report may count, in the order of the server's columns.
ERROR_REASONS: tuple[str, ...] = ("load_failed", "runtime_error", "golden_mismatch", "timeout", "other")
#: the arm of a rollout a device runs in; ``stable`` also outside any rollout.
COHORTS: tuple[str, ...] = ("stable", "canary")

#: the report schema this release's agents send: ``"schema": 2`` with a latency sketch in
#: ``latency``. A report without ``schema`` is schema 1 (``latency_counts``, the v1 histogram).
REPORT_SCHEMA = 2
#: the schemas the server accepts.
REPORT_SCHEMAS: tuple[int, ...] = (1, 2)

#: ``load_seconds``: the most seconds a model load may report (the field's range is [0, this]).
MAX_LOAD_SECONDS = 3600.0
#: ``cpu_temp_celsius``: the readings a report may carry, °C.
TEMPERATURE_RANGE: tuple[float, float] = (-50.0, 150.0)

#: the most reports one ``POST /v1/reports`` may carry.
MAX_BATCH = 100
#: the largest request body ``POST /v1/reports`` accepts (the server's ``MAX_REPORT_BYTES``).
MAX_REPORT_BYTES = 256 * 1024


def counts_as_inference(reason: str) -> bool:
    """Whether an error of ``reason`` ends an inference (and so counts as one).

    Raises:
        ValueError: ``reason`` is not one of :data:`ERROR_REASONS`.
    """
    if reason not in ERROR_REASONS:
        raise ValueError(f"unknown error reason {reason!r}; known: {list(ERROR_REASONS)}")
    return reason in INFERENCE_ERROR_REASONS


def reasons_regex(reasons: tuple[str, ...]) -> str:
    """The PromQL regex matching exactly ``reasons`` (``runtime_error|timeout|other``)."""
    return "|".join(reasons)
