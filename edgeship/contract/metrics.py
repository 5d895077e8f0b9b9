"""The metric catalogue: every ``edgeship_*`` metric, its type, help and labels, defined once.

The server exports these (``rollout_server.api.metrics``), the agent's local ``/metrics`` uses the
same names, and the alert rules and dashboards query them. Labels are bounded: no per-device
label ever (docs/protocol.md).

Kinds: ``counter`` (exported as ``<name>``, ending ``_total``), ``gauge``, ``histogram``
(``_bucket``/``_sum``/``_count``) and ``summary``: a quantile-less summary, only ``<name>_sum``
and ``<name>_count``, both counters, so a mean over a window is
``increase(<name>_sum[w]) / increase(<name>_count[w])``. The ``edgeship_report_*`` summaries
hold optional per-report values (peak RSS, model load time, CPU temperature): ``_sum`` adds the
values reports carried, ``_count`` counts those reports; a report without the value adds to
neither, so an absent value is never read as zero.
"""

from __future__ import annotations

from dataclasses import dataclass

#: every label a metric may carry; all have a bounded set of values.
BOUNDED_LABELS = frozenset({"model", "variant", "cohort", "device_class", "reason", "phase", "outcome",
                            "route_group", "state"})

#: the metric types the catalogue uses (Prometheus' text-format ``# TYPE``).
KINDS = frozenset({"counter", "gauge", "histogram", "summary"})


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter, gauge, histogram or summary (``_sum`` and ``_count`` only)
    help: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name.startswith("edgeship_"):
            raise ValueError(f"metric {self.name!r} must start with edgeship_")
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r} has kind {self.kind!r}, not one of {sorted(KINDS)}")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"metric {self.name!r}: counters, and only counters, end in _total")
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
        MetricSpec("edgeship_rollout_schedule_held", "gauge",
                   "1 while the schedule of the model's latest rollout holds it (outside its windows, "
                   "or before its start).", ("model",)),
        MetricSpec("edgeship_rollbacks_total", "counter", "Rollouts rolled back automatically.", ("model",)),
        MetricSpec("edgeship_reports_refused_total", "counter",
                   "Reports refused because the server's records contradict them, by reason.", ("reason",)),
        MetricSpec("edgeship_controller_errors_total", "counter",
                   "Rollout controller errors by reason (pass_failed, analysis_error).", ("reason",)),
        MetricSpec("edgeship_reports_total", "counter",
                   "Device reports by outcome (accepted and duplicate reports, rejected batches).",
                   ("outcome",)),
        # the perimeter: per-client limits (rollout_server/rate_limits.py)
        MetricSpec("edgeship_rate_limited_total", "counter",
                   "Requests refused 429 by the per-client limits, by route group (register, device, "
                   "operator) and reason (registration_rate, auth_failures).", ("route_group", "reason")),
        MetricSpec("edgeship_auth_failures_total", "counter",
                   "Requests answered 401, by the credential that failed (enrollment_token, "
                   "device_credential, operator_token, device_revoked, device_rejected, "
                   "missing_credential).", ("reason",)),
        # rollout notifications (rollout_server/notifications)
        MetricSpec("edgeship_webhook_deliveries_total", "counter",
                   "Webhook delivery attempts by outcome (delivered, retried: failed and will be tried "
                   "again, gave_up: failed for the last time).", ("outcome",)),
        MetricSpec("edgeship_webhook_deliveries_pending", "gauge",
                   "Webhook deliveries not done yet, by state (queued: not tried yet, retrying: failed "
                   "at least once).", ("state",)),
        # optional per-report values (schema 2): only reports that carried one count
        MetricSpec("edgeship_report_peak_rss_bytes", "summary",
                   "Peak RSS of the agent process in reports that carried one: _sum of the values, "
                   "_count of those reports (reports without it count in neither).", _FLEET),
        MetricSpec("edgeship_report_load_seconds", "summary",
                   "Model load time in reports that carried one: _sum of the values, _count of those "
                   "reports (reports without it count in neither).", _FLEET),
        MetricSpec("edgeship_report_cpu_temperature_kelvin", "summary",
                   "CPU temperature in reports that carried one, in kelvin (degrees Celsius + 273.15, "
                   "so _sum never decreases): _sum of the values, _count of those reports (reports "
                   "without it count in neither).", _FLEET),
        MetricSpec("edgeship_reports_throttled_total", "counter",
                   "Reports that said the CPU was throttled at the window's close.", _FLEET),
        MetricSpec("edgeship_reports_throttle_known_total", "counter",
                   "Reports that said whether the CPU was throttled (true or false).", _FLEET),
    )
}
