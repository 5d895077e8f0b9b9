"""The console's webhook forms (admins, as in the API): add one (its secret shown once, on the
page that answers the form), send a test event, remove one after a confirmation. Each acts
through the API's own function (rollout_server/api/webhooks.py), audited under the token's name."""

from __future__ import annotations

from types import SimpleNamespace

from flask import Response, g, request, url_for

from rollout_server.api.webhooks import create_webhook, queue_test, remove_webhook
from rollout_server.console import sessions
from rollout_server.console.action_pages import act
from rollout_server.console.pages import bp, page, refuse_operator_form, signed_in
from rollout_server.console.webhook_view import webhooks_view
from rollout_server.db import db
from rollout_server.errors import ApiError
from rollout_server.models import WebhookSubscription
from rollout_server.notifications.events import KINDS


@bp.get("/webhooks")
@signed_in
def webhooks() -> Response:
    """Webhooks and their deliveries: an admin's page, as in the API (URLs may hold secrets)."""
    if not g.console.may("admin"):
        return page("error.html", status=403, message="Webhooks are shown to admins only (their URLs may "
                                                      "hold secrets).")
    return webhooks_page()


def webhooks_page(status: int = 200, **extra: object) -> Response:
    return page("webhooks.html", status=status, webhooks=webhooks_view(db()), kinds=KINDS, **extra)


@bp.post("/webhooks")
@signed_in
def add_webhook() -> Response:
    who: sessions.SignedIn = g.console
    refused = refuse_operator_form(who, "add webhooks", "admin")
    if refused is not None:
        return refused
    form = request.form
    data = {"url": form.get("url", "").strip(), "format": form.get("format", "edgeship"),
            **({"kinds": form.getlist("kinds")} if form.getlist("kinds") else {}),
            **({"model": form["model"].strip()} if form.get("model", "").strip() else {})}
    g.actor = SimpleNamespace(name=who.name)
    try:
        subscription, secret = create_webhook(data)
    except ApiError as err:
        db().rollback()
        return webhooks_page(err.status, error=err.detail, filled=form)
    return webhooks_page(201, created={"id": subscription.id, "secret": secret})


@bp.post("/webhooks/<int(max=2147483647):webhook_id>/test")
@signed_in
def test_webhook(webhook_id: int) -> Response:
    who: sessions.SignedIn = g.console
    refused = refuse_operator_form(who, "test webhooks", "admin")
    if refused is not None:
        return refused
    return act(who, lambda: queue_test(webhook_id), url_for("console.webhooks") + f"#webhook-{webhook_id}")


@bp.post("/webhooks/<int(max=2147483647):webhook_id>/remove")
@signed_in
def remove(webhook_id: int) -> Response:
    who: sessions.SignedIn = g.console
    refused = refuse_operator_form(who, "remove webhooks", "admin")
    if refused is not None:
        return refused
    hook = db().get(WebhookSubscription, webhook_id)
    if hook is None:
        return page("error.html", status=404, message=f"No webhook {webhook_id}.")
    if request.form.get("confirm") != "yes":
        return page("confirm_webhook.html", hook=hook)
    return act(who, lambda: remove_webhook(webhook_id), url_for("console.webhooks"))

