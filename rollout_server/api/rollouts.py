"""Rollouts: create, inspect, and the manual actions (pause, resume, promote, abort, approve)."""

from __future__ import annotations

import datetime as dt
import secrets

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rollout_server.analysis import (
    GuardSpec,
    InvalidTransition,
    Phase,
    RolloutState,
    abort,
    approve,
    parse_stages,
    pause,
    promote,
    resume,
    start,
)
from rollout_server.analysis.schedule import Schedule
from rollout_server.analysis.stages import parse_approve_before
from rollout_server.auth import audit, requires_role
from rollout_server.clock import as_utc
from rollout_server.clock import now as clock_now
from rollout_server.controller import apply_decision, assigned_arms
from rollout_server.db import db
from rollout_server.errors import ApiError, Conflict, NotFound
from rollout_server.models import Model, Release, Rollout, Verdict
from rollout_server.targeting import TargetError, parse_target
from rollout_server.validation import NAME, field, json_body, request_json, short_text

bp = Blueprint("rollouts", __name__, url_prefix="/v1/rollouts")
ACTIONS = {"pause": pause, "resume": resume, "promote": promote, "abort": abort, "approve": approve}


@bp.post("")
@requires_role("operator")
def create():
    """Start a gray release of ``candidate_version`` against the model's stable release.

    Body: ``{"model", "candidate_version", "stages"?, "guards"?, "stratify"?, "shadow"?,
    "shadow_share"?, "target"?, "approve_before"?, "start_at"?, "windows"?}``; stages default to
    10% → 50% → 100%, guards to the default set; ``target`` (conditions on device attributes,
    rollout_server/targeting.py) to every device. ``approve_before`` gates stages on an operator's
    approval; ``start_at`` and ``windows`` keep it pending, and later holding, outside its
    schedule (:mod:`rollout_server.analysis.schedule`).
    """
    return jsonify(status_body(create_rollout(json_body(), _actor()))), 201


def create_rollout(data: dict, actor: str) -> Rollout:
    """Check ``data`` (the body :func:`create` documents), store the rollout, start it unless its
    schedule holds it, and commit; the API and the console both create through here.

    Raises:
        ApiError: 400 for a bad field, 404 for an unknown model or release, 409 when the model has
            no stable release or already an active rollout.
    """
    session = db()
    model = session.scalar(select(Model).where(Model.name == short_text(data, "model", pattern=NAME)))
    if model is None:
        raise NotFound(f"no model {data['model']!r}")
    if model.stable_release_id is None:
        raise Conflict(f"model {model.name!r} has no stable release to compare with; set one first")
    version = short_text(data, "candidate_version")
    candidate = session.scalar(
        select(Release).where(Release.model_id == model.id, Release.version == version))
    if candidate is None:
        raise NotFound(f"model {model.name!r} has no release {version!r}")
    if candidate.id == model.stable_release_id:
        raise Conflict(f"release {version!r} is already stable")
    if not any(v.validation == "passed" for v in candidate.variants):
        raise ApiError(f"release {version!r} has no validated variant to roll out")
    shadow = field(data, "shadow", bool, required=False, default=False)
    share = field(data, "shadow_share", (int, float), required=False, default=0.1)
    if not 0 < share <= 1:
        raise ApiError("field 'shadow_share' must be in (0, 1]")
    try:
        target = parse_target(data.get("target"))
    except TargetError as err:
        raise ApiError(f"field 'target': {err}") from None
    try:
        stages = parse_stages(data.get("stages"))
        gates = parse_approve_before(data.get("approve_before"), stages)
        state = RolloutState(stages=stages, approve_before=gates)
        schedule = Schedule.from_dict({k: data.get(k) for k in ("start_at", "windows")})
        guards = GuardSpec.from_dict(data["guards"]) if data.get("guards") is not None \
            else GuardSpec.default(shadow=shadow)
    except ValueError as err:
        raise ApiError(str(err)) from None
    active = [p.value for p in (Phase.PENDING, *Phase.active())]  # a scheduled one is about to run
    other = session.scalar(select(Rollout).where(Rollout.model_id == model.id, Rollout.phase.in_(active)))
    if other is not None:
        scheduled = " (scheduled: abort it to replace it)" if other.phase == Phase.PENDING.value else ""
        raise Conflict(f"model {model.name!r} already has an active rollout: #{other.id}{scheduled}")
    now = clock_now()
    rollout = Rollout(
        model_id=model.id, candidate_id=candidate.id, baseline_id=model.stable_release_id,
        salt=secrets.token_hex(16), phase=Phase.PENDING.value, stage_index=0, state=state.to_dict(),
        spec={"guards": guards.to_dict(), "stratify": field(data, "stratify", bool, required=False,
                                                            default=False),
              "shadow": shadow, "shadow_share": share,
              **({"target": [c.to_dict() for c in target]} if target else {}),
              **({"schedule": schedule.to_dict()} if schedule.start_at or schedule.windows else {})},
        created_at=now,
    )
    session.add(rollout)
    session.flush()
    hold = schedule.hold_reason(now)
    if hold is None:
        apply_decision(session, rollout, start(state, now.timestamp()), actor, now)
    else:  # the controller starts it when its schedule allows (controller.start_if_due)
        rollout.reason = f"pending: {hold}"
    audit("rollout.create", f"rollout:{rollout.id}", model=model.name, candidate=version)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("the rollout could not be stored; retry") from None
    return rollout


@bp.get("")
@requires_role("viewer")
def list_rollouts():
    query = select(Rollout).order_by(Rollout.id.desc()).limit(100)
    name = request.args.get("model")
    if name:
        query = query.join(Model, Rollout.model_id == Model.id).where(Model.name == name)
    return jsonify(rollouts=[summary(r) for r in db().scalars(query)])


@bp.get("/<int(max=2147483647):rollout_id>")  # larger ids: 404, not an overflow
@requires_role("viewer")
def status(rollout_id: int):
    """Phase, stage, share and every analysis verdict with its reason (newest first)."""
    return jsonify(status_body(_rollout(rollout_id)))


@bp.post("/<int(max=2147483647):rollout_id>/<action>")
@requires_role("operator")
def act(rollout_id: int, action: str):
    """Manual ``pause``, ``resume``, ``promote`` or ``abort``; body ``{"reason"?}``."""
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}; one of {', '.join(ACTIONS)}")
    data = request_json()
    if data is not None and not isinstance(data, dict):
        raise ApiError("the body, if any, must be a JSON object: {\"reason\"?}")
    reason = (data or {}).get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise ApiError("field 'reason' must be a string of at most 500 characters")
    rollout = perform(rollout_id, action, _actor(), reason)
    return jsonify(status_body(rollout))


def perform(rollout_id: int, action: str, actor: str, reason: str | None = None) -> Rollout:
    """Apply a manual action (one of :data:`ACTIONS`) as ``actor`` and commit; the API and the
    console both act through here.

    Raises:
        NotFound: no such rollout. Conflict: the action does not apply in the rollout's phase.
    """
    session = db()
    rollout = session.scalar(select(Rollout).where(Rollout.id == rollout_id).with_for_update())
    if rollout is None:
        raise NotFound(f"no rollout {rollout_id}")
    now = clock_now()
    if action == "approve":  # who approved is in the reason too (the status shows it)
        kwargs = {"reason": f"approved by {actor}" + (f": {reason}" if reason else "")}
    else:
        kwargs = {"reason": f"{action} by {actor}: {reason}"} if reason else {}
    try:
        decision = ACTIONS[action](RolloutState.from_dict(rollout.state), now.timestamp(), **kwargs)
    except InvalidTransition as err:
        raise Conflict(str(err)) from None
    apply_decision(session, rollout, decision, actor, now)
    session.commit()
    return rollout


def _actor() -> str:
    from flask import g

    return g.actor.name if getattr(g, "actor", None) else "system"


def _rollout(rollout_id: int) -> Rollout:
    rollout = db().get(Rollout, rollout_id)
    if rollout is None:
        raise NotFound(f"no rollout {rollout_id}")
    return rollout


def summary(rollout: Rollout) -> dict:
    state = RolloutState.from_dict(rollout.state)
    return {
        "id": rollout.id, "model": rollout.model.name, "candidate": rollout.candidate.version,
        "baseline": rollout.baseline.version, "phase": rollout.phase,
        "stage": rollout.stage_index + 1, "stages": len(state.stages),
        "canary_percent": state.canary_percent, "reason": rollout.reason,
        "hold_reason": hold_reason(rollout), "approval": approval_view(state),
        "created_at": rollout.created_at.isoformat(), "updated_at": rollout.updated_at.isoformat(),
    }


def status_body(rollout: Rollout, limit: int = 200, per_window: bool = False) -> dict:
    """The rollout's summary, arm counts (:func:`assigned_devices`), spec, state and newest verdicts."""
    verdicts = db().scalars(select(Verdict).where(Verdict.rollout_id == rollout.id)
                            .order_by(Verdict.id.desc()).limit(limit))
    return {
        **summary(rollout),
        "devices": assigned_devices(rollout, per_window),
        "spec": rollout.spec,
        "state": rollout.state,
        "verdicts": [{"window_end": v.window_end.isoformat(), "stage": v.stage_index + 1, "guard": v.guard,
                      "scope": v.scope, "outcome": v.outcome, "reason": v.reason, "decision": v.decision,
                      "stats": v.stats, "dry_run": bool(v.dry_run)} for v in verdicts],
    }


def assigned_devices(rollout: Rollout, per_window: bool = False) -> dict[str, int] | None:
    """How many of the devices active in this stage the bucketing puts in each arm, while a
    stage splits the fleet (else None): an operator sees at once a canary too small for the
    guards' device minimums, which would otherwise hold the rollout until more devices come.

    ``per_window``: counted once per analysis window per process (it reads every active device:
    a tenth of a second at 10,000), as the guards count them once per window; for the console,
    whose pages poll it every few seconds."""
    state = RolloutState.from_dict(rollout.state)
    if rollout.phase not in {p.value for p in Phase.active()} or not 0 < state.stage.percent < 100:
        return None
    if not per_window:
        return _arm_counts(assigned_arms(db(), rollout, state))
    window = float(current_app.config["ANALYSIS_WINDOW_SECONDS"])
    key = (rollout.id, state.stage_index, state.stage.percent, state.stage_started_at,
           int(clock_now().timestamp() // max(1.0, window)))
    counted: dict[tuple, dict[str, int]] = current_app.extensions.setdefault(_ARM_COUNTS, {})
    if key not in counted:
        if len(counted) >= 256:  # a few per rollout and window: drop the old ones
            counted.clear()
        counted[key] = _arm_counts(assigned_arms(db(), rollout, state))
    return dict(counted[key])


def _arm_counts(arms: dict[str, bool]) -> dict[str, int]:
    """``{"canary", "stable"}`` device counts of ``{device id: in the canary}``."""
    canary = sum(arms.values())
    return {"canary": canary, "stable": len(arms) - canary}


#: ``app.extensions`` key of :func:`assigned_devices`' counts
_ARM_COUNTS = "edgeship.arm_counts"


def hold_reason(rollout: Rollout) -> str | None:
    """Why the schedule keeps the rollout from moving forward now (pending or active), else None."""
    if not (rollout.phase == Phase.PENDING.value or rollout.phase in {p.value for p in Phase.active()}):
        return None
    return Schedule.from_dict(rollout.spec.get("schedule")).hold_reason(as_utc(clock_now()))


def approval_view(state: RolloutState) -> dict | None:
    """The approval awaited (also while paused from it): the stage it starts, or promotion."""
    if not state.approval_pending:
        return None
    requested = state.approval_requested_at
    return {"stage": state.stage_index + 2 if state.next_percent < 100 else None,
            "percent": state.next_percent, "action": state.next_move,
            "requested_at": None if requested is None else
            dt.datetime.fromtimestamp(requested, dt.timezone.utc).isoformat()}
