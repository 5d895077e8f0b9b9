"""What the webhooks page shows an admin: each subscription with its queued, retrying and
given-up deliveries, and its latest attempts with their HTTP status and error (the API's views:
rollout_server/api/webhooks.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rollout_server.api.webhooks import delivery_view, pending_counts, view
from rollout_server.models import Event, WebhookDelivery, WebhookSubscription
from rollout_server.notifications.events import FAILED

RECENT = 10


def webhooks_view(session: Session) -> list[dict[str, Any]]:
    """Each webhook (never its secret) with counts and its :data:`RECENT` latest deliveries."""
    pending = pending_counts()
    failed = dict(session.execute(select(WebhookDelivery.subscription_id, func.count())
                                  .where(WebhookDelivery.status == FAILED)
                                  .group_by(WebhookDelivery.subscription_id)).all())
    out = []
    for hook in session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.id)):
        recent = session.execute(select(WebhookDelivery, Event.kind, Event.created_at)
                                 .join(Event, Event.id == WebhookDelivery.event_id)
                                 .where(WebhookDelivery.subscription_id == hook.id)
                                 .order_by(WebhookDelivery.id.desc()).limit(RECENT)).all()
        out.append({**view(hook), **pending.get(hook.id, {"pending": 0, "retrying": 0}),
                    "failed": failed.get(hook.id, 0),
                    "recent": [delivery_view(d, kind, at) for d, kind, at in recent]})
    return out
