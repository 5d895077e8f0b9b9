"""Recording events: each in the caller's transaction, with one pending delivery per matching
webhook, so an event exists exactly when the change that caused it was committed.

The controller and the operator actions call :func:`rollout_changed` (every phase change and stage
advance goes through ``controller.apply_decision``), the controller :func:`verdict_failed`, and the
approval gates :func:`approval_requested`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rollout_server.analysis import RolloutState
from rollout_server.models import Event, Rollout, WebhookDelivery, WebhookSubscription

PHASE_CHANGED = "phase_changed"
STAGE_ADVANCED = "stage_advanced"
VERDICT_FAILED = "verdict_failed"
APPROVAL_REQUESTED = "approval_requested"
#: sent by ``POST /v1/webhooks/<id>/test`` to that webhook only.
TEST = "test"
#: the kinds a webhook may subscribe to.
KINDS = (PHASE_CHANGED, STAGE_ADVANCED, VERDICT_FAILED, APPROVAL_REQUESTED)
#: ``WebhookDelivery.status`` values.
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def rollout_view(rollout: Rollout) -> dict[str, Any]:
    """What every rollout event says about its rollout."""
    state = RolloutState.from_dict(rollout.state)
    return {"id": rollout.id, "model": rollout.model.name, "candidate": rollout.candidate.version,
            "baseline": rollout.baseline.version, "phase": rollout.phase, "stage": rollout.stage_index + 1,
            "stages": len(state.stages), "canary_percent": state.canary_percent}


def record_event(session: Session, kind: str, rollout: Rollout | None, data: dict[str, Any],
                 now: dt.datetime, *, only: WebhookSubscription | None = None) -> Event:
    """Add an event and a pending delivery for each webhook that wants it (``only``: that one)."""
    model = rollout.model.name if rollout is not None else None
    payload = {**({"rollout": rollout_view(rollout)} if rollout is not None else {}), **data}
    event = Event(kind=kind, rollout_id=rollout.id if rollout is not None else None, model=model,
                  created_at=now, payload=payload)
    session.add(event)
    session.flush()
    targets = [only] if only is not None else [
        s for s in session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.id))
        if (not s.kinds or kind in s.kinds) and (s.model is None or s.model == model)]
    for subscription in targets:
        session.add(WebhookDelivery(subscription_id=subscription.id, event_id=event.id, status=PENDING,
                                    attempts=0))
    return event


def rollout_changed(session: Session, rollout: Rollout, before_phase: str, before_stage: int,
                    actor: str, reason: str | None, now: dt.datetime) -> None:
    """``phase_changed`` if the phase moved, else ``stage_advanced`` if the stage did."""
    if rollout.phase != before_phase:
        record_event(session, PHASE_CHANGED, rollout, {"from": before_phase, "to": rollout.phase,
                                                       "reason": reason, "actor": actor}, now)
    elif rollout.stage_index != before_stage:
        record_event(session, STAGE_ADVANCED, rollout, {"from_stage": before_stage + 1,
                                                        "to_stage": rollout.stage_index + 1,
                                                        "reason": reason, "actor": actor}, now)


def verdict_failed(session: Session, rollout: Rollout, guard: str, scope: str, reason: str,
                   stats: dict[str, Any], decision: str, now: dt.datetime) -> None:
    """A guard failed in an analysis window (``decision``: what the controller did about it)."""
    record_event(session, VERDICT_FAILED, rollout, {"guard": guard, "scope": scope, "reason": reason,
                                                    "stats": stats, "decision": decision}, now)


def approval_requested(session: Session, rollout: Rollout, stage_index: int, reason: str,
                       now: dt.datetime) -> None:
    """The rollout waits for an operator's approval before stage ``stage_index`` (0-based) starts:
    call it in the transaction that makes it wait."""
    record_event(session, APPROVAL_REQUESTED, rollout, {"waiting_stage": stage_index + 1,
                                                        "reason": reason}, now)
