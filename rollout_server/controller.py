"""The rollout controller: once per analysis window, load the data, assess, decide, apply.

The decision itself is pure (:mod:`rollout_server.analysis`); this module does the I/O around
it. It is safe with several workers and replicas: a window is *claimed* with a conditional
``UPDATE ... WHERE analyzed_until is older than one window``; only the process whose update
hits the row analyses it, inside the same transaction (SQLite serializes writers; PostgreSQL
re-checks the condition after the row lock), so each rollout advances exactly once.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

from flask import Flask
from sqlalchemy import Float, case, cast, distinct, func, or_, select, update
from sqlalchemy.orm import Session

from edgeship.contract.latency import BUCKET_COUNT
from edgeship.contract.reports import ERROR_REASONS, INSTALL_ERROR_REASONS
from rollout_server.analysis import (
    INFERENCE_ERROR_REASONS,
    Action,
    ArmWindow,
    Decision,
    GuardSpec,
    Measurements,
    Outcome,
    Phase,
    RolloutState,
    assess,
    decide,
)
from rollout_server.analysis.device_latency import arm_latency
from rollout_server.analysis.sample_ratio import SRM_ALPHA, SRM_GRACE_SECONDS, SampleRatio, sample_ratio
from rollout_server.analysis.stats import look_alpha
from rollout_server.analysis.window import SPREAD_FIELDS
from rollout_server.bucketing import assign_cohort
from rollout_server.counters import bump
from rollout_server.db import session_scope
from rollout_server.hot_cache import LAST_SEEN_RESOLUTION_SECONDS
from rollout_server.models import AuditEntry, Device, Report, Rollout, Verdict, utcnow


def apply_decision(
    session: Session, rollout: Rollout, decision: Decision, actor: str, now: dt.datetime
) -> None:
    """Store the new state (and its queryable copies); promote makes the candidate stable."""
    state = decision.state
    rollout.state = state.to_dict()
    rollout.phase = state.phase.value
    rollout.stage_index = state.stage_index
    rollout.reason = state.reason or rollout.reason
    rollout.updated_at = now
    if decision.action is Action.PROMOTE:
        rollout.model.stable_release_id = rollout.candidate_id
    if decision.action not in (Action.NONE, Action.HOLD):
        session.add(AuditEntry(actor=actor, action=f"rollout.{decision.action.value}",
                               target=f"rollout:{rollout.id}",
                               detail={"reason": decision.reason, "alert": decision.alert}))


def claim_window(session: Session, rollout_id: int, now: dt.datetime, window_seconds: float) -> bool:
    """Mark this window as being analysed; False when another process already did it."""
    cutoff = now - dt.timedelta(seconds=window_seconds)
    result = session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.phase.in_([p.value for p in Phase.active()]),
               or_(Rollout.analyzed_until.is_(None), Rollout.analyzed_until <= cutoff))
        .values(analyzed_until=now)
    )
    return result.rowcount == 1


def load_sample_ratio(session: Session, rollout: Rollout, state: RolloutState,
                      now: dt.datetime) -> SampleRatio | None:
    """The sample ratio test of the stage (:mod:`rollout_server.analysis.sample_ratio`).

    Active devices are those seen since the stage started (less the ``last_seen_at``
    resolution), reporting ones those that sent any report for the rollout in the stage; both
    are put in an arm by the server's own bucketing, whatever cohort their reports claim. None
    at 100% (no stable arm), before the stage started and in its first ``SRM_GRACE_SECONDS``.
    """
    percent = state.stage.percent
    if (state.stage_started_at is None or not 0 < percent < 100
            or now.timestamp() - state.stage_started_at < SRM_GRACE_SECONDS):
        return None
    since = dt.datetime.fromtimestamp(state.stage_started_at, dt.timezone.utc)
    seen_since = since - dt.timedelta(seconds=LAST_SEEN_RESOLUTION_SECONDS)
    active = dict(session.execute(select(Device.id, Device.device_class)
                                  .where(Device.last_seen_at >= seen_since, Device.revoked.is_(False))).all())
    reporting = dict(session.execute(select(Report.device_id, func.min(Report.device_class))
                                     .where(Report.rollout_id == rollout.id, Report.window_end > since)
                                     .group_by(Report.device_id)).all())
    stratify = bool(rollout.spec.get("stratify"))

    def canary(device_id: str, device_class: str) -> bool:
        return assign_cohort(rollout.salt, device_id, percent, device_class if stratify else None) == "canary"

    arms = {device: canary(device, device_class) for device, device_class in {**active, **reporting}.items()}
    canary_assigned = sum(arms.values())
    canary_reporting = sum(arms[d] for d in reporting)
    return sample_ratio(canary_assigned, canary_reporting, len(arms) - canary_assigned,
                        len(reporting) - canary_reporting, alpha=look_alpha(SRM_ALPHA, state.next_look))


def load_measurements(session: Session, rollout: Rollout, state: RolloutState) -> Measurements:
    """Stage-cumulative aggregates per cohort and device class: GROUP BYs over the reports, and
    the latencies per device (:func:`_stage_latency`)."""
    since = (dt.datetime.fromtimestamp(state.stage_started_at, dt.timezone.utc)
             if state.stage_started_at is not None else rollout.created_at)
    load_failed = or_(*(getattr(Report, f"err_{reason}") > 0 for reason in INSTALL_ERROR_REASONS))
    columns = [
        func.sum(Report.inferences), func.sum(Report.labelled), func.sum(Report.correct),
        func.sum(Report.shadow_samples), func.sum(Report.shadow_agree),
        func.count(distinct(Report.device_id)),
        func.count(distinct(case((load_failed, Report.device_id)))),
        *(func.sum(getattr(Report, f"err_{reason}")) for reason in ERROR_REASONS),
    ]
    in_stage = (Report.rollout_id == rollout.id, Report.window_end > since)
    rows = session.execute(
        select(Report.cohort, Report.device_class, *columns)
        .where(*in_stage)
        .group_by(Report.cohort, Report.device_class)
    )
    spread = _device_spread(session, in_stage)
    latency = _stage_latency(session, in_stage)
    per_device = _device_values(session, in_stage)
    by_cohort: dict[str, dict[str, ArmWindow]] = {"stable": {}, "canary": {}}
    for cohort, device_class, *sums in rows:
        values = [int(v or 0) for v in sums]
        inferences, labelled, correct, shadow, agree, devices, failed = values[:7]
        errors = dict(zip(ERROR_REASONS, values[7:], strict=True))
        by_cohort[cohort][device_class] = ArmWindow(
            inferences=inferences, errors=errors,
            labelled_samples=labelled, labelled_correct=correct, devices_reporting=devices,
            devices_load_failed=failed, shadow_samples=shadow, shadow_agreements=agree,
            **spread.get((cohort, device_class), {}), **latency.get((cohort, device_class), {}),
            **per_device.get((cohort, device_class), {}),
        )
    return Measurements.from_classes(by_cohort["stable"], by_cohort["canary"], look=state.next_look)


def _device_spread(session: Session, in_stage: tuple) -> dict[tuple[str, str], dict[str, Any]]:
    """Per cohort and device class, the per-device sums of :class:`ArmWindow` for errors
    (``error_devices``, ``device_errors_sq``, ...) and wrong predictions (``labelled_devices``,
    ...) over the stage: how unevenly they fall on devices."""
    errors = sum(getattr(Report, f"err_{reason}") for reason in INFERENCE_ERROR_REASONS)
    per_device = (
        select(Report.cohort, Report.device_class, func.sum(Report.inferences).label("n"),
               func.sum(errors).label("x"), func.sum(Report.labelled).label("l"),
               func.sum(Report.labelled - Report.correct).label("w"))
        .where(*in_stage)
        .group_by(Report.cohort, Report.device_class, Report.device_id)
        .subquery()
    )
    c = per_device.c
    # as floats: squares overflow BIGINT
    n, x, lab, w = (cast(column, Float) for column in (c.n, c.x, c.l, c.w))
    rows = session.execute(
        select(c.cohort, c.device_class, func.count(c.n).filter(c.n > 0),
               func.sum(x * x), func.sum(x * n), func.sum(n * n),
               func.count(c.l).filter(c.l > 0), func.sum(w * w), func.sum(w * lab), func.sum(lab * lab))
        .group_by(c.cohort, c.device_class)
    )
    return {(cohort, device_class): dict(zip(COUNT_SPREAD, (round(v or 0) for v in sums), strict=True))
            for cohort, device_class, *sums in rows}


def _device_values(session: Session, in_stage: tuple) -> dict[tuple[str, str], dict[str, tuple[float, ...]]]:
    """Per cohort and device class, each device's largest peak RSS and model load time over the
    stage (``device_peak_rss``, ``device_load_seconds``; devices that never said are left out)."""
    rows = session.execute(
        select(Report.cohort, Report.device_class, func.max(Report.peak_rss_bytes),
               func.max(Report.load_seconds))
        .where(*in_stage)
        .group_by(Report.cohort, Report.device_class, Report.device_id))
    found: dict[tuple[str, str], dict[str, list[float]]] = {}
    for cohort, device_class, rss, load in rows:
        arm = found.setdefault((cohort, device_class), {"device_peak_rss": [], "device_load_seconds": []})
        if rss:
            arm["device_peak_rss"].append(float(rss))
        if load is not None:
            arm["device_load_seconds"].append(float(load))
    return {arm: {name: tuple(v) for name, v in fields.items()} for arm, fields in found.items()}


#: the per-device sums :func:`_device_spread` computes in SQL (the latency ones come from Python).
COUNT_SPREAD = tuple(name for name in SPREAD_FIELDS if not name.startswith(("latency_", "device_latency")))


def _stage_latency(session: Session, in_stage: tuple) -> dict[tuple[str, str], dict[str, Any]]:
    """Per cohort and device class, :class:`ArmWindow`'s latency fields (:func:`arm_latency`)
    from each device's stage data: its schema-1 histograms summed in SQL, its schema-2 sketches
    merged here."""
    v1 = session.execute(
        select(Report.cohort, Report.device_class, Report.device_id,
               *(func.sum(getattr(Report, f"lat_{i}")) for i in range(BUCKET_COUNT)))
        .where(*in_stage, Report.latency_sketch.is_(None))
        .group_by(Report.cohort, Report.device_class, Report.device_id))
    devices: dict[tuple[str, str, str], tuple[list[int], dict[int, int]]] = {}
    for cohort, device_class, device_id, *counts in v1:
        devices[(cohort, device_class, device_id)] = ([int(c or 0) for c in counts], {})
    sketches = session.execute(
        select(Report.cohort, Report.device_class, Report.device_id, Report.latency_sketch)
        .where(*in_stage, Report.latency_sketch.is_not(None)))
    for cohort, device_class, device_id, text in sketches:
        _, merged = devices.setdefault((cohort, device_class, device_id), ([0] * BUCKET_COUNT, {}))
        for index, count in json.loads(text)["buckets"]:
            merged[index] = merged.get(index, 0) + count
    arms: dict[tuple[str, str], list[tuple[list[int], dict[int, int]]]] = {}
    for (cohort, device_class, _), data in devices.items():
        arms.setdefault((cohort, device_class), []).append(data)
    return {arm: arm_latency(data) for arm, data in arms.items()}


def step_rollout(
    session: Session, rollout_id: int, now: dt.datetime, window_seconds: float
) -> Decision | None:
    """Analyse one window of one rollout if it is due; returns the decision, or None when not due."""
    if not claim_window(session, rollout_id, now, window_seconds):
        return None
    rollout = session.get(Rollout, rollout_id)
    state = RolloutState.from_dict(rollout.state)
    measurements = load_measurements(session, rollout, state)
    verdicts = assess(GuardSpec.from_dict(rollout.spec.get("guards")), measurements)
    decision = decide(state, verdicts, now.timestamp(), canary_samples=measurements.canary.inferences,
                      sample_ratio=load_sample_ratio(session, rollout, state, now))
    for verdict in verdicts:
        session.add(Verdict(
            rollout_id=rollout.id, window_end=now, stage_index=state.stage_index,
            guard=verdict.guard[:32],
            scope=(",".join(verdict.stats.get("failing_classes") or []) or "all")[:32],
            outcome=verdict.outcome.value,
            reason=verdict.reason, stats=verdict.to_dict()["stats"], decision=decision.action.value,
        ))
    if any(v.outcome is Outcome.ERROR for v in verdicts):
        bump(session, "controller_errors_analysis_error")
    apply_decision(session, rollout, decision, "controller", now)
    return decision


def step_all(app: Flask, now: dt.datetime | None = None) -> dict[int, Decision]:
    """One controller pass over every active rollout; each in its own transaction."""
    now = now or utcnow()
    window = float(app.config["ANALYSIS_WINDOW_SECONDS"])
    decisions = {}
    for rollout_id in active_rollout_ids(app):
        try:
            with session_scope(app) as session:
                decision = step_rollout(session, rollout_id, now, window)
        except Exception:  # one broken rollout must not stop the others' analysis
            app.logger.exception("controller step of rollout %s failed", rollout_id)
            count_controller_error(app, "pass_failed")
            continue
        if decision is not None:
            decisions[rollout_id] = decision
    return decisions


def active_rollout_ids(app: Flask) -> list[int]:
    with session_scope(app) as session:
        active = [p.value for p in Phase.active()]
        return list(session.scalars(select(Rollout.id).where(Rollout.phase.in_(active))))


def count_controller_error(app: Flask, reason: str) -> None:
    """Add one to ``edgeship_controller_errors_total{reason}`` (never raises: it is bookkeeping)."""
    try:
        with session_scope(app) as session:
            bump(session, f"controller_errors_{reason}")
    except Exception:
        app.logger.exception("could not count a controller error")


def start_controller(app: Flask) -> threading.Thread:
    """Run :func:`step_all` every ``CONTROLLER_INTERVAL_SECONDS`` in a daemon thread."""
    stop = threading.Event()
    app.extensions["edgeship.controller_stop"] = stop

    def loop() -> None:
        while not stop.wait(float(app.config["CONTROLLER_INTERVAL_SECONDS"])):
            try:
                step_all(app)
            except Exception:  # keep the loop alive; the error is logged and retried next pass
                app.logger.exception("controller pass failed")
                count_controller_error(app, "pass_failed")

    thread = threading.Thread(target=loop, name="edgeship-controller", daemon=True)
    thread.start()
    return thread
