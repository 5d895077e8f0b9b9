"""Database models (SQLAlchemy 2). The same models run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from edgeship.contract.latency import BUCKET_COUNT
from edgeship.contract.reports import ERROR_REASONS


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """A registry name; ``stable_release`` is what devices run outside a rollout."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    stable_release_id: Mapped[int | None] = mapped_column(
        ForeignKey("releases.id", use_alter=True, name="fk_model_stable_release"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stable_release: Mapped[Release | None] = relationship(foreign_keys=[stable_release_id], post_update=True)


class Release(Base):
    """One uploaded, verified release: its signed manifest and its variants."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    signed_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model: Mapped[Model] = relationship(foreign_keys=[model_id])
    variants: Mapped[list[Variant]] = relationship(back_populates="release", order_by="Variant.id")


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("release_id", "variant_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    variant_id: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    precision: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str] = mapped_column(String(32))
    runtime_min_version: Mapped[str] = mapped_column(String(64), default="")
    validation: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    release: Mapped[Release] = relationship(back_populates="variants")


class Token(Base):
    """Operator tokens (viewer < publisher < operator < admin) and enrollment tokens.

    Any token may expire (``expires_at``). An enrollment token may also be limited to
    ``max_uses`` registrations (``uses`` counts them, raised in the registration's transaction),
    to some device classes, and may set the admission of the devices it enrolls
    (``auto``/``manual``; None: the server's ``DEVICE_ADMISSION``).
    """

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    device_classes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    admission: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Device(Base):
    """An enrolled device.

    ``admission`` is ``pending`` (waits for an operator), ``accepted`` or ``rejected``;
    ``revoked`` is set by a revocation and by a rejection: a credential refused for good. After a
    credential rotation the old credential's hash stays in ``previous_credential_hash`` until the
    new one is first used or ``previous_credential_expires_at`` (docs/protocol.md §2.3).
    """

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(32), index=True)
    arch: Mapped[str] = mapped_column(String(32))
    os: Mapped[str] = mapped_column(String(64))
    ram_bytes: Mapped[int] = mapped_column(BigInteger)
    runtimes: Mapped[dict[str, Any]] = mapped_column(JSON)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    admission: Mapped[str] = mapped_column(String(16), default="accepted", index=True)
    enrollment_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # tokens.id
    #: None for devices enrolled before credentials could rotate: then it is ``created_at``
    credential_issued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True,
                                                                     default=utcnow)
    previous_credential_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True,
                                                                 index=True)
    previous_credential_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                                               nullable=True)
    #: what the device claims of itself for targeting (app_version, region...; docs/protocol.md §2.2)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class DeviceRelease(Base):
    """A release the server assigned a device (as its release or its shadow candidate): the
    artifacts a device credential may download (docs/protocol.md §5.1)."""

    __tablename__ = "device_releases"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), primary_key=True)
    assigned_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Rollout(Base):
    """A gray release of ``candidate`` against ``baseline`` (the stable release at creation)."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    baseline_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    salt: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(32), index=True)  # analysis.Phase (awaiting_approval: 17)
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # guards, stratify, shadow, schedule
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # controller bookkeeping
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    analyzed_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    model: Mapped[Model] = relationship(foreign_keys=[model_id])
    candidate: Mapped[Release] = relationship(foreign_keys=[candidate_id])
    baseline: Mapped[Release] = relationship(foreign_keys=[baseline_id])


class Verdict(Base):
    """One guard's verdict for one scope (device class or pooled) in one analysis window."""

    __tablename__ = "verdicts"
    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    window_end: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    stage_index: Mapped[int] = mapped_column(Integer)
    guard: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16))
    #: a dry-run guard's verdict: shown, never acted on (``decision`` is what the acting guards did)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)


class WindowPoint(Base):
    """One arm of a rollout in one analysis window, as the console charts it: sums, distinct
    reporting devices and merged latency quantiles of the reports whose window ended in it.

    The controller writes them when it analyses a window (:mod:`rollout_server.window_points`), so
    a chart reads a few rows per window instead of every report of every device."""

    __tablename__ = "window_points"
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    #: the window's end on the grid of ``ANALYSIS_WINDOW_SECONDS`` (epoch seconds)
    window_end: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    arm: Mapped[str] = mapped_column(String(8), primary_key=True)
    inferences: Mapped[int] = mapped_column(BigInteger)
    labelled: Mapped[int] = mapped_column(BigInteger)
    correct: Mapped[int] = mapped_column(BigInteger)
    load_failures: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    devices: Mapped[int] = mapped_column(Integer)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class FleetSnapshot(Base):
    """What the fleet ran and who failed over the last minutes, as the controller last took it
    (:mod:`rollout_server.fleet_activity`); one row per snapshot kind."""

    __tablename__ = "fleet_snapshots"
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    taken_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class Report(Base):
    """One device's aggregates for one reporting window; ``(device_id, report_id)`` is unique."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("device_id", "report_id"),
        # a device's reports by time: its baseline's latest reports (rollout_server/device_rows.py)
        Index("ix_reports_device_id_window_end", "device_id", "window_end"),
        # a rollout's windows (console charts, controller) and the fleet's recent reports: 0010
        Index("ix_reports_rollout_id_window_end", "rollout_id", "window_end"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))  # indexed first in the unique key
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"), nullable=True)
    variant_id: Mapped[str] = mapped_column(String(64))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), nullable=True)
    cohort: Mapped[str] = mapped_column(String(8))
    device_class: Mapped[str] = mapped_column(String(32))
    window_start: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    inferences: Mapped[int] = mapped_column(BigInteger)
    labelled: Mapped[int] = mapped_column(BigInteger, default=0)
    correct: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_agree: Mapped[int] = mapped_column(BigInteger, default=0)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    dropped_windows: Mapped[int] = mapped_column(Integer, default=0)
    latency_sum_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: schema-2 reports: the latency sketch as JSON (``edgeship.contract.sketch`` wire form);
    #: their ``lat_*`` columns stay 0, which hold only what schema-1 reports sent.
    latency_sketch: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: what the device could tell (NULL when it could not): the model's load time, its CPU's
    #: temperature and whether it was throttled at the window's close
    load_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    cpu_temp_celsius: Mapped[float | None] = mapped_column(Float, nullable=True)
    throttled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    @property
    def errors(self) -> dict[str, int]:
        return {reason: getattr(self, f"err_{reason}") for reason in ERROR_REASONS}

    @property
    def latency_counts(self) -> list[int]:
        return [getattr(self, f"lat_{i}") for i in range(BUCKET_COUNT)]


# Errors by reason and latency buckets are plain integer columns, so the controller and
# /metrics aggregate them with SQL SUM instead of reading every report.
for _reason in ERROR_REASONS:
    setattr(Report, f"err_{_reason}", mapped_column(f"err_{_reason}", BigInteger, default=0))
for _i in range(BUCKET_COUNT):
    setattr(Report, f"lat_{_i}", mapped_column(f"lat_{_i}", BigInteger, default=0))


class ReportTotal(Base):
    """Running sums of the accepted reports per model, variant, cohort and device class.

    The report writer adds to them in the transaction that stores the reports, so ``/metrics``
    reads these few rows instead of summing the whole ``reports`` table at every scrape (which
    grows without bound). Each writing process adds to its own ``shard`` of a key, so concurrent
    transactions of several processes do not queue on one row lock (PostgreSQL); readers sum the
    shards.
    """

    __tablename__ = "report_totals"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    variant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cohort: Mapped[str] = mapped_column(String(8), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(32), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    reports: Mapped[int] = mapped_column(BigInteger, default=0)
    inferences: Mapped[int] = mapped_column(BigInteger, default=0)
    labelled: Mapped[int] = mapped_column(BigInteger, default=0)
    correct: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_sum_seconds: Mapped[float] = mapped_column(Float, default=0.0)


#: the summed columns of ``report_totals`` that ``reports`` has too, in the writer's order.
TOTALLED: tuple[str, ...] = (
    "inferences", "labelled", "correct", "latency_sum_seconds",
    *(f"err_{reason}" for reason in ERROR_REASONS), *(f"lat_{i}" for i in range(BUCKET_COUNT)),
)
for _name in TOTALLED[4:]:
    setattr(ReportTotal, _name, mapped_column(_name, BigInteger, default=0, nullable=False))

#: ``report_totals`` columns over the optional per-report values, in the writer's order after
#: :data:`TOTALLED`: name → (the ``reports`` column, what is summed: ``sum`` of the values
#: given, ``count`` of reports that gave one, ``true`` of reports whose value is true). A mean
#: is a sum over its count; absent values count in neither.
DEVICE_TOTALS: dict[str, tuple[str, str]] = {
    "peak_rss_sum": ("peak_rss_bytes", "sum"), "peak_rss_reports": ("peak_rss_bytes", "count"),
    "load_seconds_sum": ("load_seconds", "sum"), "load_reports": ("load_seconds", "count"),
    "cpu_temp_sum": ("cpu_temp_celsius", "sum"), "cpu_temp_reports": ("cpu_temp_celsius", "count"),
    "throttled_reports": ("throttled", "true"), "throttle_known_reports": ("throttled", "count"),
}
for _name, (_source, _kind) in DEVICE_TOTALS.items():
    setattr(ReportTotal, _name, mapped_column(_name, Float if _kind == "sum" else BigInteger, default=0,
                                              nullable=False))


class LatencyTotal(Base):
    """Running sums of the schema-2 reports' latency sketches per ``report_totals`` key and sketch
    bucket, for ``/metrics`` (sharded like :class:`ReportTotal`)."""

    __tablename__ = "latency_totals"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    variant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cohort: Mapped[str] = mapped_column(String(8), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(32), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Counter(Base):
    """Server-wide counters that no table holds otherwise (duplicate and rejected reports)."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Event(Base):
    """A notification-worthy change (phase change, stage advance, failed verdict, approval request),
    written in the transaction of the change itself (an outbox): committed with it or not at all."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), nullable=True, index=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class WebhookSubscription(Base):
    """Where events are POSTed: ``kinds`` and ``model`` filter them (None: all); ``secret_sealed``
    is the signing secret encrypted with the server's webhook key (rollout_server/notifications)."""

    __tablename__ = "webhook_subscriptions"
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret_sealed: Mapped[str] = mapped_column(Text)
    kinds: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    format: Mapped[str] = mapped_column(String(16), default="edgeship")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """One event for one subscription: ``pending`` until ``delivered`` or ``failed`` (given up).

    ``claim``/``claimed_until`` are the lease of the dispatcher sending it, so two replicas never
    both send; ``next_attempt_at`` None means as soon as possible.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_subscription_status", "subscription_id", "status", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claim: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ConsoleSession(Base):
    """A signed-in console browser (rollout_server/console/sessions.py): the hash of its cookie's
    secret, the operator token it signed in with, its CSRF token and its deadlines."""

    __tablename__ = "console_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
