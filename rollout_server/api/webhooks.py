"""Webhooks (admin): subscribe a URL to rollout events, list, remove, see deliveries, send a test.

A webhook's signing secret is generated (or given) at creation and returned only then; it is
stored sealed (:mod:`rollout_server.notifications.sealing`). Every change is audited, with the
URL's host only (a Slack URL is itself a secret).
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import case, delete, func, select

from rollout_server import clock
from rollout_server.auth import audit, requires_role
from rollout_server.db import db
from rollout_server.errors import ApiError, NotFound
from rollout_server.models import Event, WebhookDelivery, WebhookSubscription
from rollout_server.notifications.dispatcher import webhook_key
from rollout_server.notifications.events import KINDS, PENDING, TEST, record_event
from rollout_server.notifications.payloads import FORMATS
from rollout_server.notifications.sealing import seal
from rollout_server.notifications.targets import check_url
from rollout_server.validation import NAME, field, json_body, short_text

bp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks")
WEBHOOK_ID = "<int(max=2147483647):webhook_id>"  # larger ids: 404, not an overflow
#: bounds of a secret given by the caller (a generated one is 43 characters after the prefix).
MIN_SECRET, MAX_SECRET = 16, 256
MAX_DELIVERIES = 500


@bp.post("")
@requires_role("admin")
def create():
    """Subscribe ``url`` to events. Body: ``{"url", "secret"?, "kinds"?, "format"?, "model"?}``."""
    subscription, secret = create_webhook(json_body())
    return jsonify({**view(subscription), "secret": secret}), 201


def create_webhook(data: dict) -> tuple[WebhookSubscription, str]:
    """Check ``data`` (the body :func:`create` documents), store the webhook, audit and commit;
    returns it and its secret (shown once). The API and the console both create through here.

    Raises:
        ApiError: 400 naming the bad field.
    """
    url = field(data, "url", str)
    try:
        check_url(url, current_app.config["WEBHOOK_ALLOWED_HOSTS"])
    except ValueError as err:
        raise ApiError(f"field 'url': {err}") from None
    secret = field(data, "secret", str, required=False)
    if secret is not None and not (MIN_SECRET <= len(secret) <= MAX_SECRET and secret.isprintable()):
        raise ApiError(f"field 'secret' must be {MIN_SECRET} to {MAX_SECRET} printable characters")
    kinds = field(data, "kinds", list, required=False)
    if kinds is not None and (not kinds or any(k not in KINDS for k in kinds)):
        raise ApiError(f"field 'kinds' must be a non-empty list of {', '.join(KINDS)}")
    fmt = field(data, "format", str, required=False, default="edgeship")
    if fmt not in FORMATS:
        raise ApiError(f"field 'format' must be one of {', '.join(FORMATS)}")
    model = short_text(data, "model", pattern=NAME, required=False)
    secret = secret or "whsec_" + secrets.token_urlsafe(32)
    subscription = WebhookSubscription(
        url=url, secret_sealed=seal(webhook_key(current_app), secret),
        kinds=sorted(set(kinds), key=KINDS.index) if kinds else None, model=model, format=fmt,
        created_by=request_actor(), created_at=clock.now())
    session = db()
    session.add(subscription)
    session.flush()
    audit("webhook.create", f"webhook:{subscription.id}", host=urlsplit(url).hostname, format=fmt,
          kinds=subscription.kinds, model=model)
    session.commit()
    return subscription, secret


@bp.get("")
@requires_role("admin")
def list_webhooks():
    """Every webhook (never its secret) with its pending and failing deliveries."""
    session = db()
    counts = pending_counts()
    hooks = session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.id))
    return jsonify(webhooks=[{**view(h), **counts.get(h.id, {"pending": 0, "retrying": 0})} for h in hooks])


@bp.delete(f"/{WEBHOOK_ID}")
@requires_role("admin")
def remove(webhook_id: int):
    """Remove a webhook and its deliveries (pending ones are never sent)."""
    remove_webhook(webhook_id)
    return jsonify(id=webhook_id, removed=True)


def remove_webhook(webhook_id: int) -> None:
    """Delete the webhook and its deliveries, audited; 404 if there is none."""
    session = db()
    subscription = _subscription(webhook_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id))
    session.delete(subscription)
    audit("webhook.remove", f"webhook:{webhook_id}", host=urlsplit(subscription.url).hostname)
    session.commit()


@bp.get(f"/{WEBHOOK_ID}/deliveries")
@requires_role("admin")
def deliveries(webhook_id: int):
    """The webhook's latest deliveries, newest first (``limit``, default 50, at most 500)."""
    _subscription(webhook_id)
    limit = request.args.get("limit", "50")
    if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= MAX_DELIVERIES:
        raise ApiError(f"limit must be an integer from 1 to {MAX_DELIVERIES}")
    rows = db().execute(select(WebhookDelivery, Event.kind, Event.created_at)
                        .join(Event, Event.id == WebhookDelivery.event_id)
                        .where(WebhookDelivery.subscription_id == webhook_id)
                        .order_by(WebhookDelivery.id.desc()).limit(int(limit))).all()
    return jsonify(deliveries=[delivery_view(d, kind, created) for d, kind, created in rows])


@bp.post(f"/{WEBHOOK_ID}/test")
@requires_role("admin")
def test(webhook_id: int):
    """Queue a ``test`` event for this webhook only (sent by the next dispatcher pass)."""
    event_id, delivery = queue_test(webhook_id)
    return jsonify(webhook_id=webhook_id, event_id=event_id, delivery_id=delivery), 202


def queue_test(webhook_id: int) -> tuple[int, int | None]:
    """Queue a ``test`` event for this webhook only, audited; its event and delivery ids."""
    session = db()
    subscription = _subscription(webhook_id)
    event = record_event(session, TEST, None, {"reason": "a test sent by an operator",
                                               "actor": request_actor()}, clock.now(), only=subscription)
    session.flush()
    delivery = session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id))
    audit("webhook.test", f"webhook:{webhook_id}", event=event.id)
    session.commit()
    return event.id, delivery


def view(subscription: WebhookSubscription) -> dict[str, Any]:
    return {"id": subscription.id, "url": subscription.url, "kinds": subscription.kinds or list(KINDS),
            "model": subscription.model, "format": subscription.format, "created_by": subscription.created_by,
            "created_at": clock.as_utc(subscription.created_at).isoformat()}


def delivery_view(delivery: WebhookDelivery, kind: str, created_at) -> dict[str, Any]:
    def iso(value):
        return clock.as_utc(value).isoformat() if value is not None else None

    return {"id": delivery.id, "event_id": delivery.event_id, "kind": kind, "event_at": iso(created_at),
            "status": delivery.status, "attempts": delivery.attempts,
            "last_attempt_at": iso(delivery.last_attempt_at), "last_status_code": delivery.last_status_code,
            "last_error": delivery.last_error, "next_attempt_at": iso(delivery.next_attempt_at)
            if delivery.status == PENDING else None}


def pending_counts() -> dict[int, dict[str, int]]:
    """``{webhook id: {"pending": n, "retrying": m}}``: deliveries not yet done, and those of them
    that failed at least once."""
    rows = db().execute(select(WebhookDelivery.subscription_id, func.count(),
                               func.sum(case((WebhookDelivery.attempts > 0, 1), else_=0)))
                        .where(WebhookDelivery.status == PENDING).group_by(WebhookDelivery.subscription_id))
    return {subscription_id: {"pending": int(pending), "retrying": int(retrying or 0)}
            for subscription_id, pending, retrying in rows}


def _subscription(webhook_id: int) -> WebhookSubscription:
    subscription = db().get(WebhookSubscription, webhook_id)
    if subscription is None:
        raise NotFound(f"no webhook {webhook_id}")
    return subscription


def request_actor() -> str:
    from flask import g

    return g.actor.name if getattr(g, "actor", None) else "system"

