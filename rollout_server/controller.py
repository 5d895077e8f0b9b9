"""The rollout controller: once per analysis window, load the data, assess, decide, apply.

The decision itself is pure (:mod:`rollout_server.analysis`); this module does the I/O around
it. It is safe with several workers and replicas: a window is *claimed* with a conditional
``UPDATE ... WHERE analyzed_until is older than one window``; only the process whose update
hits the row analyses it, inside the same transaction (SQLite serializes writers; PostgreSQL
re-checks the condition after the row lock), so each rollout advances exactly once.
"""

from __future__ import annotations

import datetime as dt
import threading

from flask import Flask
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from rollout_server.analysis import (
    Action,
    ArmWindow,
    Decision,
    GuardSpec,
    Measurements,
    Outcome,
    Phase,
    RolloutState,
    decide,
    start,
)
from rollout_server.analysis.dry_run import assess_split
from rollout_server.analysis.sample_ratio import SRM_ALPHA, SRM_GRACE_SECONDS, SampleRatio, sample_ratio
from rollout_server.analysis.schedule import Schedule
from rollout_server.analysis.stats import look_alpha
from rollout_server.bucketing import assign_cohort
from rollout_server.clock import as_utc
from rollout_server.config import DEFAULTS
from rollout_server.counters import bump
from rollout_server.db import session_scope
from rollout_server.db_files import database_file_problem
from rollout_server.device_rows import BaselineCache, arm_fields, stage_devices
from rollout_server.fleet_activity import take_if_due
from rollout_server.hot_cache import LAST_SEEN_RESOLUTION_SECONDS
from rollout_server.models import AuditEntry, Device, Report, Rollout, Verdict, utcnow
from rollout_server.notifications import events
from rollout_server.targeting import matches, parse_target
from rollout_server.window_points import record_window_points


def apply_decision(
    session: Session, rollout: Rollout, decision: Decision, actor: str, now: dt.datetime
) -> None:
    """Store the new state (and its queryable copies); reaching ``promoted`` (by promotion or an
    approval) makes the candidate stable. A phase change or stage advance is recorded as an event
    (webhooks) in the same transaction, and so is an approval request when the rollout starts
    waiting for one."""
    state = decision.state
    before = (rollout.phase, rollout.stage_index)
    rollout.state = state.to_dict()
    rollout.phase = state.phase.value
    rollout.stage_index = state.stage_index
    rollout.reason = state.reason or rollout.reason
    rollout.updated_at = now
    if state.phase is Phase.PROMOTED and before[0] != Phase.PROMOTED.value:
        rollout.model.stable_release_id = rollout.candidate_id
    if decision.action not in (Action.NONE, Action.HOLD):
        session.add(AuditEntry(actor=actor, action=f"rollout.{decision.action.value}",
                               target=f"rollout:{rollout.id}",
                               detail={"reason": decision.reason, "alert": decision.alert}))
    events.rollout_changed(session, rollout, *before, actor, decision.reason or state.reason, now)
    if state.phase is Phase.AWAITING_APPROVAL and before[0] != Phase.AWAITING_APPROVAL.value:
        events.approval_requested(session, rollout, state.stage_index + 1, state.reason, now)


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
    reporting = dict(session.execute(select(Report.device_id, func.min(Report.device_class))
                                     .where(Report.rollout_id == rollout.id, Report.window_end > since)
                                     .group_by(Report.device_id)).all())
    arms = assigned_arms(session, rollout, state, extra=reporting)
    canary_assigned = sum(arms.values())
    canary_reporting = sum(arms[d] for d in reporting)
    return sample_ratio(canary_assigned, canary_reporting, len(arms) - canary_assigned,
                        len(reporting) - canary_reporting, alpha=look_alpha(SRM_ALPHA, state.next_look))


def assigned_arms(session: Session, rollout: Rollout, state: RolloutState,
                  extra: dict[str, str] | None = None) -> dict[str, bool]:
    """``{device id: in the canary}`` for the devices active in the current stage (seen since it
    started, less the ``last_seen_at`` resolution; revoked ones left out) and those in ``extra``
    (``{device id: device class}``), each put in an arm by the server's own bucketing at the
    stage's share. Active devices the rollout's target does not admit are in neither arm."""
    percent = state.stage.percent
    started = state.stage_started_at if state.stage_started_at is not None else utcnow().timestamp()
    seen_since = (dt.datetime.fromtimestamp(started, dt.timezone.utc)
                  - dt.timedelta(seconds=LAST_SEEN_RESOLUTION_SECONDS))
    target = parse_target(rollout.spec.get("target"))
    recent = (Device.last_seen_at >= seen_since, Device.revoked.is_(False))
    if target:
        active = {device: cls for device, cls, attributes in session.execute(
            select(Device.id, Device.device_class, Device.attributes).where(*recent))
            if matches(target, cls, attributes)}
    else:  # every device is admitted: no JSON to read
        active = dict(session.execute(select(Device.id, Device.device_class).where(*recent)).tuples().all())
    stratify = bool(rollout.spec.get("stratify"))
    return {device: assign_cohort(rollout.salt, device, percent, cls if stratify else None) == "canary"
            for device, cls in {**active, **(extra or {})}.items()}


def load_measurements(session: Session, rollout: Rollout, state: RolloutState,
                      baselines: BaselineCache | None = None) -> Measurements:
    """Stage-cumulative aggregates per cohort and device class, from each device's sums over the
    stage (:func:`rollout_server.device_rows.stage_devices`, one statement) and, for the device
    tables, its baseline (``baselines``: read for the stage's devices not read yet; uncached
    with the default ``BASELINE_SECONDS`` and ``BASELINE_REPORTS`` when not given)."""
    since = (dt.datetime.fromtimestamp(state.stage_started_at, dt.timezone.utc)
             if state.stage_started_at is not None else rollout.created_at)
    devices = stage_devices(session, (Report.rollout_id == rollout.id, Report.window_end > since))
    if baselines is None:
        baselines = BaselineCache(DEFAULTS["BASELINE_SECONDS"], reports=DEFAULTS["BASELINE_REPORTS"])
    seen = [device.device_id for rows in devices.values() for device in rows]
    baseline = baselines.rows(session, rollout, seen) if devices else None
    by_cohort: dict[str, dict[str, ArmWindow]] = {"stable": {}, "canary": {}}
    for (cohort, device_class), rows in devices.items():
        by_cohort[cohort][device_class] = ArmWindow(**arm_fields(rows, baseline))
    return Measurements.from_classes(by_cohort["stable"], by_cohort["canary"], look=state.next_look)


#: ``session.info`` key under which :func:`step_all` hands :func:`step_rollout` the app's
#: :class:`BaselineCache` (also its ``app.extensions`` key)
BASELINES = "edgeship.baselines"


def step_rollout(
    session: Session, rollout_id: int, now: dt.datetime, window_seconds: float
) -> Decision | None:
    """Analyse one window of one rollout if it is due; returns the decision, or None when not due.
    Baselines come from the cache in ``session.info[BASELINES]``, else are read uncached."""
    previous = session.scalar(select(Rollout.analyzed_until).where(Rollout.id == rollout_id))
    if not claim_window(session, rollout_id, now, window_seconds):
        return None
    record_window_points(session, rollout_id, as_utc(previous) if previous is not None else None, now,
                         window_seconds)
    rollout = session.get(Rollout, rollout_id)
    state = RolloutState.from_dict(rollout.state)
    measurements = load_measurements(session, rollout, state, session.info.get(BASELINES))
    verdicts, rehearsed = assess_split(GuardSpec.from_dict(rollout.spec.get("guards")), measurements)
    decision = decide(state, verdicts, now.timestamp(), canary_samples=measurements.canary.inferences,
                      sample_ratio=load_sample_ratio(session, rollout, state, now),
                      hold=Schedule.from_dict(rollout.spec.get("schedule")).hold_reason(now))
    for verdict, dry_run in [*((v, False) for v in verdicts), *((v, True) for v in rehearsed)]:
        scope = (",".join(verdict.stats.get("failing_classes") or []) or "all")[:32]
        stats = verdict.to_dict()["stats"]
        session.add(Verdict(
            rollout_id=rollout.id, window_end=now, stage_index=state.stage_index, guard=verdict.guard[:32],
            scope=scope, outcome=verdict.outcome.value, reason=verdict.reason, stats=stats,
            decision=decision.action.value, dry_run=dry_run,
        ))
        if verdict.outcome is Outcome.FAIL and not dry_run:  # a dry-run guard alerts no one
            events.verdict_failed(session, rollout, verdict.guard, scope, verdict.reason, stats,
                                  decision.action.value, now)
    if any(v.outcome is Outcome.ERROR for v in verdicts):  # acting guards only
        bump(session, "controller_errors_analysis_error")
    apply_decision(session, rollout, decision, "controller", now)
    return decision


def start_if_due(session: Session, rollout_id: int, now: dt.datetime) -> Decision | None:
    """Start a scheduled (pending) rollout whose schedule allows it at ``now``; None otherwise.

    The conditional ``UPDATE`` is the claim: another process's start of the same rollout, committed
    first, leaves it no longer pending, so it starts once.
    """
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or rollout.phase != Phase.PENDING.value:
        return None
    if Schedule.from_dict(rollout.spec.get("schedule")).hold_reason(now) is not None:
        return None
    claimed = session.execute(update(Rollout)
                              .where(Rollout.id == rollout_id, Rollout.phase == Phase.PENDING.value)
                              .values(analyzed_until=None))
    if claimed.rowcount != 1:
        return None
    session.refresh(rollout)
    if rollout.phase != Phase.PENDING.value:
        return None
    decision = start(RolloutState.from_dict(rollout.state), now.timestamp())
    apply_decision(session, rollout, decision, "controller", now)
    return decision


def step_all(app: Flask, now: dt.datetime | None = None) -> dict[int, Decision]:
    """One controller pass: the fleet page's snapshot when due, start the scheduled rollouts that
    are due, then analyse every active rollout; each in its own transaction. ``now`` defaults to
    the app's ``CLOCK``."""
    if database_file_problem(app) is not None:  # logged there; writes would land in a lost file
        return {}
    clock = app.config.get("CLOCK")
    now = now or (clock() if clock is not None else utcnow())
    window = float(app.config["ANALYSIS_WINDOW_SECONDS"])
    baselines = app.extensions.get(BASELINES)
    if baselines is None:
        baselines = app.extensions[BASELINES] = BaselineCache(float(app.config["BASELINE_SECONDS"]),
                                                              reports=int(app.config["BASELINE_REPORTS"]))
    decisions = {}
    try:
        with session_scope(app) as session:
            take_if_due(session, now, dt.timedelta(seconds=window),
                        dt.timedelta(minutes=float(app.config["CONSOLE_RECENT_MINUTES"])))
    except Exception:  # the console's snapshot must not stop the rollouts' analysis
        app.logger.exception("controller: the fleet snapshot failed")
        count_controller_error(app, "pass_failed")
    for rollout_id in pending_rollout_ids(app):
        try:
            with session_scope(app) as session:
                decision = start_if_due(session, rollout_id, now)
        except Exception:  # one broken rollout must not stop the others
            app.logger.exception("controller start of rollout %s failed", rollout_id)
            count_controller_error(app, "pass_failed")
            continue
        if decision is not None:
            decisions[rollout_id] = decision
    for rollout_id in active_rollout_ids(app):
        try:
            with session_scope(app) as session:
                session.info[BASELINES] = baselines
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


def pending_rollout_ids(app: Flask) -> list[int]:
    """Rollouts waiting for their schedule (``start_at`` or a window) to start."""
    with session_scope(app) as session:
        return list(session.scalars(select(Rollout.id).where(Rollout.phase == Phase.PENDING.value)))


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
