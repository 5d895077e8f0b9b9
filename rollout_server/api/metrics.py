"""``/metrics``: the ``edgeship_*`` catalogue, computed from the database at scrape time.

The database is the source of truth (several workers and replicas share it), so a scrape of
any replica gives the fleet's totals; nothing is kept in process memory. The report counters
come from ``report_totals``, which the report writer adds to in the transaction that stores the
reports: a scrape reads a few rows per model, variant, cohort and device class, however many
reports are stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS
from edgeship.contract.metrics import METRICS
from edgeship.contract.reports import ERROR_REASONS
from rollout_server.analysis import Phase, RolloutState
from rollout_server.counters import CONTROLLER_ERRORS, COUNTERS, REPORT_REFUSALS
from rollout_server.models import Counter, Device, Model, ReportTotal, Rollout, utcnow

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


def _family(kind, name: str, extra_labels: tuple[str, ...] = ()):
    spec = METRICS[name]
    return kind(name.removesuffix("_total") if kind is CounterMetricFamily else name, spec.help,
                labels=list(spec.labels) if not extra_labels else list(extra_labels))


def _fleet_metrics(session: Session) -> Iterator:
    sums = [func.sum(ReportTotal.latency_sum_seconds),
            func.sum(ReportTotal.inferences), func.sum(ReportTotal.labelled), func.sum(ReportTotal.correct),
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
    for model, variant, cohort, device_class, latency_sum, *values in rows:
        labels = [model, variant, cohort, device_class]
        values = [int(v or 0) for v in values]
        inferences.add_metric(labels, values[0])
        samples.add_metric(labels, values[1])
        correct.add_metric(labels, values[2])
        for reason, count in zip(ERROR_REASONS, values[3 : 3 + len(ERROR_REASONS)], strict=True):
            errors.add_metric([*labels, reason], count)
        counts = values[3 + len(ERROR_REASONS):]
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS_SECONDS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        latency.add_metric(labels, buckets, sum_value=float(latency_sum or 0.0))
    yield from (inferences, errors, samples, correct, latency)


def _rollout_metrics(session: Session) -> Iterator:
    ratio = _family(GaugeMetricFamily, "edgeship_rollout_canary_ratio")
    phase = _family(GaugeMetricFamily, "edgeship_rollout_phase")
    rollbacks = _family(CounterMetricFamily, "edgeship_rollbacks_total")
    latest = select(Rollout.model_id, func.max(Rollout.id)).group_by(Rollout.model_id).subquery()
    for rollout in session.scalars(select(Rollout).join(latest, Rollout.id == latest.c[1])):
        state = RolloutState.from_dict(rollout.state)
        active = state.phase.is_active
        ratio.add_metric([rollout.model.name], state.canary_percent / 100 if active else 0.0)
        for each in Phase:  # one series per phase, 1 for the current one
            phase.add_metric([rollout.model.name, each.value], 1.0 if rollout.phase == each.value else 0.0)
    counts = session.execute(
        select(Model.name, func.count(Rollout.id)).join(Model, Model.id == Rollout.model_id)
        .where(Rollout.phase == Phase.ROLLED_BACK.value).group_by(Model.name))
    for model, count in counts:
        rollbacks.add_metric([model], count)
    yield from (ratio, phase, rollbacks)


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


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; no authentication (bind the server to a private interface)."""
    registry = current_app.extensions.get("edgeship.metrics_registry")
    if registry is None:
        registry = CollectorRegistry()
        registry.register(DatabaseCollector(current_app.extensions["edgeship.sessions"]))
        current_app.extensions["edgeship.metrics_registry"] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
