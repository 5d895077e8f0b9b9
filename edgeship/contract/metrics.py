"""The metric catalogue: every ``edgeship_*`` metric, its type, help and labels, defined once.

The server exports these (``rollout_server.api.metrics``), the agent's local ``/metrics`` uses the
same names, and the alert rules and dashboards query them. Labels are bounded: no per-device
label ever (docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass

#: every label a metric may carry; all have a bounded set of values.
BOUNDED_LABELS = frozenset({"model", "variant", "cohort", "device_class", "reason", "phase", "outcome"})


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name.startswith("edgeship_"):
            raise ValueError(f"metric {self.name!r} must start with edgeship_")
        if not set(self.labels) <= BOUNDED_LABELS:
            raise ValueError(f"metric {self.name!r} has unbounded labels {set(self.labels) - BOUNDED_LABELS}")


_FLEET = ("model", "variant", "cohort", "device_class")

METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("edgeship_inferences_total", "counter", "Inferences reported by devices.", _FLEET),
        MetricSpec("edgeship_inference_errors_total", "counter", "Inference and model errors by reason.",
                   (*_FLEET, "reason")),
        MetricSpec("edgeship_inference_latency_seconds", "histogram",
                   "On-device inference latency (shared buckets from edgeship.contract.latency).", _FLEET),
        MetricSpec("edgeship_eval_samples_total", "counter", "Labelled or golden samples evaluated.", _FLEET),
        MetricSpec("edgeship_eval_correct_total", "counter", "Labelled or golden samples predicted right.",
                   _FLEET),
        MetricSpec("edgeship_active_devices", "gauge", "Devices that checked in within the active window.",
                   ("device_class",)),
        MetricSpec("edgeship_rollout_canary_ratio", "gauge", "Canary share of the active rollout (0-1).",
                   ("model",)),
        MetricSpec("edgeship_rollout_phase", "gauge", "1 for the phase the model's latest rollout is in.",
                   ("model", "phase")),
        MetricSpec("edgeship_rollbacks_total", "counter", "Rollouts rolled back automatically.", ("model",)),
        MetricSpec("edgeship_reports_refused_total", "counter",
                   "Reports refused because the server's records contradict them, by reason.", ("reason",)),
        MetricSpec("edgeship_controller_errors_total", "counter",
                   "Rollout controller errors by reason (pass_failed, analysis_error).", ("reason",)),
        MetricSpec("edgeship_reports_total", "counter",
                   "Device reports by outcome (accepted and duplicate reports, rejected batches).",
                   ("outcome",)),
    )
}
