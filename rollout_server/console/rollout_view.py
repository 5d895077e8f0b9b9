"""What a rollout's page shows besides its charts (:mod:`rollout_server.window_points`): its stages
with when each began, the audit trail and the actions its phase allows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rollout_server import clock
from rollout_server.analysis import InvalidTransition, Phase, RolloutState
from rollout_server.api.rollouts import ACTIONS
from rollout_server.models import AuditEntry, Rollout


def stage_timeline(session: Session, rollout: Rollout) -> list[dict[str, Any]]:
    """Each stage: percent, minimum duration, and when it began (from the audit trail), with
    ``state`` ``done`` / ``current`` / ``next``."""
    state = RolloutState.from_dict(rollout.state)
    began = [clock.as_utc(e.at) for e in session.scalars(
        select(AuditEntry).where(AuditEntry.target == f"rollout:{rollout.id}",
                                 AuditEntry.action.in_(("rollout.start", "rollout.advance")))
        .order_by(AuditEntry.id))]
    active = state.phase.is_active
    timeline = []
    for index, stage in enumerate(state.stages):
        if state.phase is Phase.PROMOTED or index < state.stage_index:
            where = "done"
        elif index == state.stage_index and active:
            where = "current"
        else:
            where = "next"
        timeline.append({"index": index + 1, "percent": stage.percent, "state": where,
                         "min_minutes": stage.min_duration_seconds / 60, "min_samples": stage.min_samples,
                         "began_at": began[index] if index < len(began) else None})
    return timeline


def audit_trail(session: Session, rollout_id: int, limit: int = 200) -> list[AuditEntry]:
    """The rollout's audit entries, newest first."""
    return list(session.scalars(select(AuditEntry).where(AuditEntry.target == f"rollout:{rollout_id}")
                                .order_by(AuditEntry.id.desc()).limit(limit)))


def allowed_actions(row: Rollout) -> list[str]:
    """The manual actions the rollout's phase allows now (the buttons shown)."""
    state = RolloutState.from_dict(row.state)
    allowed = []
    for name, act in ACTIONS.items():
        try:
            act(state, clock.now().timestamp())
        except InvalidTransition:
            continue
        allowed.append(name)
    return allowed
