"""The bodies a webhook receives: the edgeship JSON document, or Slack's ``{"text": ...}``.

Built from the stored event at send time, byte for byte the same on every retry.
"""

from __future__ import annotations

import json
from typing import Any

from rollout_server.models import Event

FORMATS = ("edgeship", "slack")


def event_document(event: Event) -> dict[str, Any]:
    """``{"id", "kind", "created_at", ...the event's data}`` (``rollout`` for rollout events)."""
    return {"id": event.id, "kind": event.kind, "created_at": _iso(event), **event.payload}


def body(event: Event, fmt: str) -> bytes:
    document = {"text": summary(event)} if fmt == "slack" else event_document(event)
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")


def summary(event: Event) -> str:
    """One readable line: rollout, model, versions, what happened and why."""
    data = event.payload
    rollout = data.get("rollout")
    head = (f"edgeship rollout #{rollout['id']} of {rollout['model']} {rollout['candidate']} "
            f"(vs {rollout['baseline']})" if rollout else "edgeship")
    reason = f": {data['reason']}" if data.get("reason") else ""
    if event.kind == "phase_changed":
        return f"{head}: {data['from']} → {data['to']}{reason}"
    if event.kind == "stage_advanced":
        return (f"{head}: stage {data['from_stage']} → {data['to_stage']} at {rollout['canary_percent']:g}%"
                f"{reason}")
    if event.kind == "verdict_failed":
        return (f"{head}: guard {data['guard']} failed ({data['scope']}), decision {data['decision']}"
                f"{reason}")
    if event.kind == "approval_requested":
        return f"{head}: waiting for approval before stage {data['waiting_stage']}{reason}"
    return f"{head}: {event.kind}{reason}"


def _iso(event: Event) -> str:
    created = event.created_at
    if created.tzinfo is None:  # SQLite gives times back without a zone; they are UTC
        return created.isoformat() + "+00:00"
    return created.isoformat()
