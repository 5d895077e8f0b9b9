"""``/metrics``: the ``edgeship_*`` catalogue, computed from the database at scrape time.

The database is the source of truth (several workers and replicas share it), so a scrape of
any replica gives the fleet's totals; only the counts of refused requests (429s, 401s) wait in a
process's memory, for at most a second (:mod:`rollout_server.counter_buffer`). The report counters
come from ``report_totals``, which the report writer adds to in the transaction that stores the
reports: a scrape reads a few rows per model, variant, cohort and device class, however many
reports are stored. The latency histogram is on ``METRIC_BUCKETS_SECONDS`` (at most 10% apart):
schema-2 reports' sketches (``latency_totals``) folded onto it, and schema-1 reports' v1
histograms placed at their bucket's upper bound (exact at the v1 bounds). The optional
per-report values (peak RSS, model load time, CPU temperature) are quantile-less summaries
(``_sum`` of the values reports carried, ``_count`` of those reports) and ``throttled`` two
counters (reports that said true, reports that said either): a report without a value counts in
neither, so ``increase(_sum) / increase(_count)`` is the mean over the reports that had one.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from edgeship.contract.latency import (
    BUCKET_COUNT,
    METRIC_BUCKETS_SECONDS,
    metric_counts_from_sketch,
    metric_counts_from_v1,
)
from edgeship.contract.metrics import METRICS
from edgeship.contract.reports import ERROR_REASONS
from rollout_server.analysis import Phase, RolloutState
from rollout_server.api.rollouts import hold_reason
from rollout_server.counter_buffer import EXTENSION as COUNTER_BUFFER
from rollout_server.counters import (
    AUTH_FAILURES,
    CONTROLLER_ERRORS,
    COUNTERS,
    RATE_LIMITED,
    REPORT_REFUSALS,
    WEBHOOK_OUTCOMES,
)
from rollout_server.models import (
    Counter,
    Device,
    LatencyTotal,
    Model,
    ReportTotal,
    Rollout,
    WebhookDelivery,
    utcnow,
)
from rollout_server.notifications.events import PENDING

bp = Blueprint("metrics", __name__)
ACTIVE_DEVICE_SECONDS = 300


class DatabaseCollector:
    """A prometheus_client collector that reads the catalogue's values from the database."""

    def __init__(self, sessions) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator:
        with self.sessions() as session:
            yield from _fleet_metrics(session)
            yield from _rollout_metrics(session)
            yield from _device_metrics(session)
            yield from _report_metrics(session)
            yield from _webhook_metrics(session)


def _family(kind, name: str, extra_labels: tuple[str, ...] = ()):
    spec = METRICS[name]
    return kind(name.removesuffix("_total") if kind is CounterMetricFamily else name, spec.help,
                labels=list(spec.labels) if not extra_labels else list(extra_labels))


#: the optional per-report values (``DEVICE_TOTALS`` of rollout_server.models) as summaries:
#: metric → (``report_totals`` sum column, count column, added to the sum per counted report).
REPORT_VALUE_SUMMARIES: dict[str, tuple[str, str, float]] = {
    "edgeship_report_peak_rss_bytes": ("peak_rss_sum", "peak_rss_reports", 0.0),
    "edgeship_report_load_seconds": ("load_seconds_sum", "load_reports", 0.0),
    # kelvin: readings may be below 0 °C, and a summary's _sum must never decrease
    "edgeship_report_cpu_temperature_kelvin": ("cpu_temp_sum", "cpu_temp_reports", 273.15),
}
#: counters of the optional ``throttled`` value: metric → ``report_totals`` column.
THROTTLE_COUNTERS: dict[str, str] = {
    "edgeship_reports_throttled_total": "throttled_reports",
    "edgeship_reports_throttle_known_total": "throttle_known_reports",
}
_FLOAT_SUMS = ("latency_sum_seconds", *(column for column, _, _ in REPORT_VALUE_SUMMARIES.values()))
_COUNTS = (*(count for _, count, _ in REPORT_VALUE_SUMMARIES.values()), *THROTTLE_COUNTERS.values())
_Key = tuple[str, str, str, str]


def _fleet_metrics(session: Session) -> Iterator:
    sums = [func.sum(ReportTotal.inferences), func.sum(ReportTotal.labelled), func.sum(ReportTotal.correct),
            *(func.sum(getattr(ReportTotal, f"err_{r}")) for r in ERROR_REASONS),
            *(func.sum(getattr(ReportTotal, f"lat_{i}")) for i in range(BUCKET_COUNT))]
    rows = session.execute(  # a few rows per key (the shards), never the reports themselves
        select(Model.name, ReportTotal.variant_id, ReportTotal.cohort, ReportTotal.device_class, *sums)
        .join(Model, Model.id == ReportTotal.model_id)
        .group_by(Model.name, ReportTotal.variant_id, ReportTotal.cohort, ReportTotal.device_class)
    ).all()
    inferences = _family(CounterMetricFamily, "edgeship_inferences_total")
    errors = _family(CounterMetricFamily, "edgeship_inference_errors_total")
    samples = _family(CounterMetricFamily, "edgeship_eval_samples_total")
    correct = _family(CounterMetricFamily, "edgeship_eval_correct_total")
    latency = _family(HistogramMetricFamily, "edgeship_inference_latency_seconds")
    summaries = {name: _family(SummaryMetricFamily, name) for name in REPORT_VALUE_SUMMARIES}
    throttle = {name: _family(CounterMetricFamily, name) for name in THROTTLE_COUNTERS}
    sketches = _latency_sketches(session)
    device_values = _device_value_totals(session)
    lat_start = 3 + len(ERROR_REASONS)
    for model, variant, cohort, device_class, *values in rows:
        key = (model, variant, cohort, device_class)
        labels = list(key)
        values = [int(v or 0) for v in values]
        inferences.add_metric(labels, values[0])
        samples.add_metric(labels, values[1])
        correct.add_metric(labels, values[2])
        for reason, count in zip(ERROR_REASONS, values[3:lat_start], strict=True):
            errors.add_metric([*labels, reason], count)
        counts = metric_counts_from_v1(values[lat_start:])
        precise = metric_counts_from_sketch(sketches.get(key, {}))
        counts = [a + b for a, b in zip(counts, precise, strict=True)]
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, METRIC_BUCKETS_SECONDS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        totals = device_values.get(key, {})
        latency.add_metric(labels, buckets, sum_value=totals.get("latency_sum_seconds", 0.0))
        for name, (column, count_column, offset) in REPORT_VALUE_SUMMARIES.items():
            reported = int(totals.get(count_column, 0))  # exported at 0 too: increase() sees the first
            summaries[name].add_metric(labels, count_value=reported,
                                       sum_value=math.fsum((totals.get(column, 0.0), offset * reported)))
        for name, column in THROTTLE_COUNTERS.items():
            throttle[name].add_metric(labels, int(totals.get(column, 0)))
    yield from (inferences, errors, samples, correct, latency, *summaries.values(), *throttle.values())


def _device_value_totals(session: Session) -> dict[_Key, dict[str, float | int]]:
    """Per key, the float sums of ``report_totals`` (``latency_sum_seconds`` and the optional
    values') and the optional values' counts, over the shards, read in one statement (so a sum
    and its count always cover the same reports).

    The float sums are ``math.fsum``-ed here, not SQL ``SUM``-ed: SQL's result depends on the
    order it reads the shards in (which an update can change on PostgreSQL), so two scrapes of
    unchanged totals could differ in the last bit, and a counter that goes down by a bit is a
    counter reset to Prometheus (``increase()`` would count the whole total again). ``fsum`` is
    exact, hence the same in any order, and never decreases while no shard's value does.
    """
    columns = (*_FLOAT_SUMS, *_COUNTS)
    rows = session.execute(
        select(Model.name, ReportTotal.variant_id, ReportTotal.cohort, ReportTotal.device_class,
               *(getattr(ReportTotal, name) for name in columns))
        .join(Model, Model.id == ReportTotal.model_id))
    shards: dict[_Key, list[dict[str, float | int]]] = {}
    for model, variant, cohort, device_class, *values in rows:  # a few rows per key (the shards)
        shards.setdefault((model, variant, cohort, device_class), []).append(
            dict(zip(columns, (v or 0 for v in values), strict=True)))
    return {key: {**{name: math.fsum(float(shard[name]) for shard in parts) for name in _FLOAT_SUMS},
                  **{name: sum(int(shard[name]) for shard in parts) for name in _COUNTS}}
            for key, parts in shards.items()}


def _latency_sketches(session: Session) -> dict[tuple[str, str, str, str], dict[int, int]]:
    """The schema-2 latencies per (model, variant, cohort, device class): sketch bucket → count."""
    rows = session.execute(
        select(Model.name, LatencyTotal.variant_id, LatencyTotal.cohort, LatencyTotal.device_class,
               LatencyTotal.bucket, func.sum(LatencyTotal.count))
        .join(Model, Model.id == LatencyTotal.model_id)
        .group_by(Model.name, LatencyTotal.variant_id, LatencyTotal.cohort, LatencyTotal.device_class,
                  LatencyTotal.bucket))
    sketches: dict[tuple[str, str, str, str], dict[int, int]] = {}
    for model, variant, cohort, device_class, bucket, count in rows:
        sketches.setdefault((model, variant, cohort, device_class), {})[bucket] = int(count or 0)
    return sketches


def _rollout_metrics(session: Session) -> Iterator:
    ratio = _family(GaugeMetricFamily, "edgeship_rollout_canary_ratio")
    phase = _family(GaugeMetricFamily, "edgeship_rollout_phase")
    held = _family(GaugeMetricFamily, "edgeship_rollout_schedule_held")
    rollbacks = _family(CounterMetricFamily, "edgeship_rollbacks_total")
    latest = select(Rollout.model_id, func.max(Rollout.id)).group_by(Rollout.model_id).subquery()
    for rollout in session.scalars(select(Rollout).join(latest, Rollout.id == latest.c[1])):
        state = RolloutState.from_dict(rollout.state)
        active = state.phase.is_active
        ratio.add_metric([rollout.model.name], state.canary_percent / 100 if active else 0.0)
        held.add_metric([rollout.model.name], 1.0 if hold_reason(rollout) is not None else 0.0)
        for each in Phase:  # one series per phase, 1 for the current one
            phase.add_metric([rollout.model.name, each.value], 1.0 if rollout.phase == each.value else 0.0)
    counts = session.execute(
        select(Model.name, func.count(Rollout.id)).join(Model, Model.id == Rollout.model_id)
        .where(Rollout.phase == Phase.ROLLED_BACK.value).group_by(Model.name))
    for model, count in counts:
        rollbacks.add_metric([model], count)
    yield from (ratio, phase, held, rollbacks)


def _device_metrics(session: Session) -> Iterator:
    active = _family(GaugeMetricFamily, "edgeship_active_devices")
    since = utcnow() - dt.timedelta(seconds=ACTIVE_DEVICE_SECONDS)
    rows = session.execute(select(Device.device_class, func.count(Device.id))
                           .where(Device.last_seen_at >= since, Device.revoked.is_(False))
                           .group_by(Device.device_class))
    for device_class, count in rows:
        active.add_metric([device_class], count)
    yield active


def _report_metrics(session: Session) -> Iterator:
    reports = _family(CounterMetricFamily, "edgeship_reports_total")
    reports.add_metric(["accepted"], session.scalar(select(func.sum(ReportTotal.reports))) or 0)
    values = {c.name: c.value for c in session.scalars(select(Counter).where(Counter.name.in_(COUNTERS)))}
    for name in ("reports_duplicate", "reports_rejected"):
        reports.add_metric([name.removeprefix("reports_")], values.get(name, 0))
    yield reports
    refused = _family(CounterMetricFamily, "edgeship_reports_refused_total")
    for reason in REPORT_REFUSALS:
        refused.add_metric([reason], values.get(f"reports_refused_{reason}", 0))
    yield refused
    errors = _family(CounterMetricFamily, "edgeship_controller_errors_total")
    for reason in CONTROLLER_ERRORS:
        errors.add_metric([reason], values.get(f"controller_errors_{reason}", 0))
    yield errors
    limited = _family(CounterMetricFamily, "edgeship_rate_limited_total")
    for group, reason in RATE_LIMITED:
        limited.add_metric([group, reason], values.get(f"rate_limited_{group}_{reason}", 0))
    failures = _family(CounterMetricFamily, "edgeship_auth_failures_total")
    for reason in AUTH_FAILURES:
        failures.add_metric([reason], values.get(f"auth_failures_{reason}", 0))
    yield from (limited, failures)


def _webhook_metrics(session: Session) -> Iterator:
    """Delivery attempts by outcome (counters) and the deliveries still to do (a gauge)."""
    deliveries = _family(CounterMetricFamily, "edgeship_webhook_deliveries_total")
    values = {c.name: c.value for c in session.scalars(
        select(Counter).where(Counter.name.in_([f"webhook_deliveries_{o}" for o in WEBHOOK_OUTCOMES])))}
    for outcome in WEBHOOK_OUTCOMES:
        deliveries.add_metric([outcome], values.get(f"webhook_deliveries_{outcome}", 0))
    pending = _family(GaugeMetricFamily, "edgeship_webhook_deliveries_pending")
    total, retrying = session.execute(
        select(func.count(), func.sum(case((WebhookDelivery.attempts > 0, 1), else_=0)))
        .where(WebhookDelivery.status == PENDING)).one()
    pending.add_metric(["queued"], total - (retrying or 0))
    pending.add_metric(["retrying"], retrying or 0)
    yield from (deliveries, pending)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; no authentication (bind the server to a private interface)."""
    buffered = current_app.extensions.get(COUNTER_BUFFER)
    if buffered is not None:  # this process's counts in memory (others write theirs within a second)
        buffered.flush()
    registry = current_app.extensions.get("edgeship.metrics_registry")
    if registry is None:
        registry = CollectorRegistry()
        registry.register(DatabaseCollector(current_app.extensions["edgeship.sessions"]))
        current_app.extensions["edgeship.metrics_registry"] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
