"""Rollouts: create, inspect, and the manual actions (pause, resume, promote, abort)."""

from __future__ import annotations

import secrets

from flask import Blueprint, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rollout_server.analysis import (
    GuardSpec,
    InvalidTransition,
    Phase,
    RolloutState,
    abort,
    parse_stages,
    pause,
    promote,
    resume,
    start,
)
from rollout_server.auth import audit, requires_role
from rollout_server.controller import apply_decision, assigned_arms
from rollout_server.db import db
from rollout_server.errors import ApiError, Conflict, NotFound
from rollout_server.models import Model, Release, Rollout, Verdict, utcnow
from rollout_server.validation import NAME, field, json_body, request_json, short_text

bp = Blueprint("rollouts", __name__, url_prefix="/v1/rollouts")
ACTIONS = {"pause": pause, "resume": resume, "promote": promote, "abort": abort}


@bp.post("")
@requires_role("operator")
def create():
    """Start a gray release of ``candidate_version`` against the model's stable release.

    Body: ``{"model", "candidate_version", "stages"?, "guards"?, "stratify"?, "shadow"?,
    "shadow_share"?}``; stages default to 10% → 50% → 100%, guards to the default set.
    """
    data = json_body()
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
        state = RolloutState(stages=parse_stages(data.get("stages")))
        guards = GuardSpec.from_dict(data["guards"]) if data.get("guards") is not None \
            else GuardSpec.default(shadow=shadow)
    except ValueError as err:
        raise ApiError(str(err)) from None
    active = [p.value for p in Phase.active()]
    if session.scalar(select(Rollout.id).where(Rollout.model_id == model.id, Rollout.phase.in_(active))):
        raise Conflict(f"model {model.name!r} already has an active rollout")
    now = utcnow()
    rollout = Rollout(
        model_id=model.id, candidate_id=candidate.id, baseline_id=model.stable_release_id,
        salt=secrets.token_hex(16), phase=Phase.PENDING.value, stage_index=0, state=state.to_dict(),
        spec={"guards": guards.to_dict(), "stratify": field(data, "stratify", bool, required=False,
                                                            default=False),
              "shadow": shadow, "shadow_share": share},
        created_at=now,
    )
    session.add(rollout)
    session.flush()
    apply_decision(session, rollout, start(state, now.timestamp()), _actor(), now)
    audit("rollout.create", f"rollout:{rollout.id}", model=model.name, candidate=version)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("the rollout could not be stored; retry") from None
    return jsonify(status_body(rollout)), 201


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
    session = db()
    rollout = session.scalar(select(Rollout).where(Rollout.id == rollout_id).with_for_update())
    if rollout is None:
        raise NotFound(f"no rollout {rollout_id}")
    now = utcnow()
    kwargs = {"reason": f"{action} by {_actor()}: {reason}"} if reason else {}
    try:
        decision = ACTIONS[action](RolloutState.from_dict(rollout.state), now.timestamp(), **kwargs)
    except InvalidTransition as err:
        raise Conflict(str(err)) from None
    apply_decision(session, rollout, decision, _actor(), now)
    session.commit()
    return jsonify(status_body(rollout))


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
        "created_at": rollout.created_at.isoformat(), "updated_at": rollout.updated_at.isoformat(),
    }


def status_body(rollout: Rollout, limit: int = 200) -> dict:
    verdicts = db().scalars(select(Verdict).where(Verdict.rollout_id == rollout.id)
                            .order_by(Verdict.id.desc()).limit(limit))
    return {
        **summary(rollout),
        "devices": assigned_devices(rollout),
        "spec": rollout.spec,
        "state": rollout.state,
        "verdicts": [{"window_end": v.window_end.isoformat(), "stage": v.stage_index + 1, "guard": v.guard,
                      "scope": v.scope, "outcome": v.outcome, "reason": v.reason, "decision": v.decision,
                      "stats": v.stats} for v in verdicts],
    }


def assigned_devices(rollout: Rollout) -> dict[str, int] | None:
    """How many of the devices active in this stage the bucketing puts in each arm, while a
    stage splits the fleet (else None): an operator sees at once a canary too small for the
    guards' device minimums, which would otherwise hold the rollout until more devices come."""
    state = RolloutState.from_dict(rollout.state)
    if rollout.phase not in {p.value for p in Phase.active()} or not 0 < state.stage.percent < 100:
        return None
    arms = assigned_arms(db(), rollout, state)
    canary = sum(arms.values())
    return {"canary": canary, "stable": len(arms) - canary}
