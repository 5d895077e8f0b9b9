"""The webhook dispatcher: a thread in each server process that sends due deliveries.

Several workers and replicas may run it at once. A delivery is *claimed* with a conditional
``UPDATE`` that sets a lease (``claim``, ``claimed_until``); only the process whose update hit
the row sends it, outside any transaction, then records the outcome only if it still holds the
lease. A process that dies mid-send leaves the lease to expire and the delivery is sent again
(at least once: receivers drop delivery ids they have seen). Only the oldest pending delivery of
each webhook is ever due, so a webhook receives its events in order.
"""

from __future__ import annotations

import datetime as dt
import http.client
import random
import secrets
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import func, or_, select, update

from rollout_server.counters import bump
from rollout_server.db import session_scope
from rollout_server.db_files import database_file_problem
from rollout_server.models import Event, WebhookDelivery, WebhookSubscription, utcnow
from rollout_server.notifications import payloads, schedule
from rollout_server.notifications.events import DELIVERED, FAILED, PENDING
from rollout_server.notifications.sealing import SecretUnavailable, load_key, unseal
from rollout_server.notifications.signing import signed_headers
from rollout_server.notifications.targets import check_url

#: how much of a failure's description is kept.
ERROR_CHARS = 300
#: the most deliveries one pass sends (the next pass takes the rest).
BATCH = 50


@dataclass(frozen=True)
class Attempt:
    """What one POST gave: an HTTP status, or the error that prevented one."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


#: ``send(url, body, headers, timeout_seconds) -> Attempt``; tests may pass their own.
Sender = Callable[[str, bytes, dict[str, str], float], Attempt]


def post(url: str, body: bytes, headers: dict[str, str], timeout_seconds: float) -> Attempt:
    """POST without following redirects (a redirect is a failure: it could lead anywhere)."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout_seconds, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_seconds)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(4096)
        return Attempt(response.status, None if 200 <= response.status < 300 else f"HTTP {response.status}")
    except (OSError, http.client.HTTPException) as err:  # refused, reset, timeout, TLS, bad reply
        return Attempt(None, f"{type(err).__name__}: {err}"[:ERROR_CHARS])
    finally:
        connection.close()


def app_now(app: Flask) -> dt.datetime:
    clock = app.config.get("CLOCK")
    return clock() if clock is not None else utcnow()


def webhook_key(app: Flask) -> bytes:
    key = app.extensions.get("edgeship.webhook_key")
    if key is None:
        key = app.extensions["edgeship.webhook_key"] = load_key(app.config["WEBHOOK_SECRETS_KEY"],
                                                                app.config["DATA_DIR"])
    return key


def due_deliveries(app: Flask, now: dt.datetime) -> list[int]:
    """Ids of the deliveries that may be sent now: each webhook's oldest pending one, if its time
    has come and no live lease holds it."""
    with session_scope(app) as session:
        heads = (select(func.min(WebhookDelivery.id)).where(WebhookDelivery.status == PENDING)
                 .group_by(WebhookDelivery.subscription_id))
        return list(session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.id.in_(heads),
                   or_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.next_attempt_at <= now),
                   or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until <= now))
            .order_by(WebhookDelivery.id).limit(BATCH)))


def claim(app: Flask, delivery_id: int, now: dt.datetime, lease_seconds: float) -> str | None:
    """Take the delivery's lease; its token, or None when another process holds it or it is done."""
    token = secrets.token_hex(16)
    with session_scope(app) as session:
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
                   or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until <= now))
            .values(claim=token, claimed_until=now + dt.timedelta(seconds=lease_seconds)))
        return token if result.rowcount == 1 else None


def dispatch_due(app: Flask, now: dt.datetime | None = None, send: Sender = post,
                 rng: random.Random | None = None) -> dict[int, str]:
    """One pass: send what is due, each webhook's deliveries one after the other (the next once the
    previous is done), at most :data:`BATCH`; returns ``{delivery id: outcome}``."""
    if database_file_problem(app) is not None:  # logged there; writes would land in a lost file
        return {}
    now = now or app_now(app)
    timeout = float(app.config["WEBHOOK_TIMEOUT_SECONDS"])
    outcomes: dict[int, str] = {}
    while len(outcomes) < BATCH:
        sent = 0
        for delivery_id in due_deliveries(app, now):
            token = claim(app, delivery_id, now, lease_seconds=timeout * 2 + 30)
            if token is None:  # another dispatcher has it
                continue
            attempt = _attempt(app, delivery_id, now, send, timeout)
            if attempt is None:  # its webhook was removed meanwhile
                continue
            outcome = record(app, delivery_id, token, attempt, now, rng)
            if outcome is not None:
                outcomes[delivery_id] = outcome
                sent += 1
        if not sent:  # nothing left that is due (a retried delivery waits for its time)
            break
    return outcomes


def _attempt(app: Flask, delivery_id: int, now: dt.datetime, send: Sender, timeout: float) -> Attempt | None:
    """Build, sign and send one delivery (the database is read, then left, before the POST)."""
    with session_scope(app) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        subscription = session.get(WebhookSubscription, delivery.subscription_id) if delivery else None
        if subscription is None:
            return None
        event = session.get(Event, delivery.event_id)
        try:
            # checked again: WEBHOOK_ALLOWED_HOSTS may have changed since the webhook was added
            url = check_url(subscription.url, app.config["WEBHOOK_ALLOWED_HOSTS"])
            secret = unseal(webhook_key(app), subscription.secret_sealed)
        except (ValueError, SecretUnavailable) as err:
            return Attempt(None, f"not sent: {err}"[:ERROR_CHARS])
        body = payloads.body(event, subscription.format)
        headers = signed_headers(secret, event.kind, delivery.id, int(now.timestamp()), body)
    return send(url, body, headers, timeout)


def record(app: Flask, delivery_id: int, token: str, attempt: Attempt, now: dt.datetime,
           rng: random.Random | None = None) -> str | None:
    """Store an attempt's outcome if this process still holds the lease; the outcome, else None."""
    with session_scope(app) as session:
        delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                                WebhookDelivery.claim == token)
                                  .with_for_update())
        if delivery is None:
            return None
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.last_status_code = attempt.status
        delivery.last_error = attempt.error
        delivery.claim = delivery.claimed_until = None
        if attempt.ok:
            delivery.status, delivery.next_attempt_at, outcome = DELIVERED, None, "delivered"
        elif schedule.gives_up(delivery.attempts, int(app.config["WEBHOOK_MAX_ATTEMPTS"])):
            delivery.status, delivery.next_attempt_at, outcome = FAILED, None, "gave_up"
        else:
            base = float(app.config["WEBHOOK_RETRY_BASE_SECONDS"])
            wait = schedule.retry_delay_seconds(delivery.attempts, base, rng)
            delivery.next_attempt_at, outcome = now + dt.timedelta(seconds=wait), "retried"
        bump(session, f"webhook_deliveries_{outcome}")
    return outcome


def start_dispatcher(app: Flask) -> threading.Thread:
    """Run :func:`dispatch_due` every ``WEBHOOK_DISPATCH_INTERVAL_SECONDS`` in a daemon thread."""
    stop = threading.Event()
    app.extensions["edgeship.dispatcher_stop"] = stop

    def loop() -> None:
        while not stop.wait(float(app.config["WEBHOOK_DISPATCH_INTERVAL_SECONDS"])):
            try:
                dispatch_due(app)
            except Exception:  # keep the loop alive; logged (never with a secret) and retried
                app.logger.exception("webhook dispatch pass failed")

    thread = threading.Thread(target=loop, name="edgeship-webhooks", daemon=True)
    thread.start()
    return thread
