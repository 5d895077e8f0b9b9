"""The console's actions: a rollout's pause, resume, promote and abort, a device's accept, reject
and revoke. Each POST comes from a confirmation page (``confirm=yes``) and acts through the same
function as the API, audited under the signed-in token's name."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from flask import Response, g, redirect, request, url_for

from rollout_server.api.device_admin import DEVICE_ACTIONS, change_device, state_of
from rollout_server.api.rollouts import ACTIONS, perform, summary
from rollout_server.console import sessions
from rollout_server.console.pages import bp, page, refuse_operator_form, signed_in
from rollout_server.db import db
from rollout_server.errors import ApiError
from rollout_server.models import Device, Rollout


@bp.post("/rollouts/<int(max=2147483647):rollout_id>/<action>")
@signed_in
def rollout_action(rollout_id: int, action: str) -> Response:
    """An operator's action, after a confirmation page (``confirm=yes`` comes only from that page)."""
    who: sessions.SignedIn = g.console
    refused = refuse_operator_form(who, f"{action} rollouts")
    if refused is not None:
        return refused
    row = db().get(Rollout, rollout_id)
    if row is None or action not in ACTIONS:
        return page("error.html", status=404, message=f"No rollout {rollout_id} or no action {action!r}.")
    reason = (request.form.get("reason") or "").strip()[:500] or None
    if request.form.get("confirm") != "yes":
        return page("confirm.html", rollout=summary(row), action=action, reason=reason or "")
    return act(who, lambda: perform(rollout_id, action, who.name, reason),
               url_for("console.rollout", rollout_id=rollout_id))


@bp.post("/devices/<device_id>/<action>")
@signed_in
def device_action(device_id: str, action: str) -> Response:
    """Accept, reject or revoke a device, after a confirmation page (as for rollouts)."""
    who: sessions.SignedIn = g.console
    refused = refuse_operator_form(who, f"{action} devices")
    if refused is not None:
        return refused
    device = db().get(Device, device_id)
    if device is None or action not in DEVICE_ACTIONS:
        return page("error.html", status=404, message=f"No device {device_id!r} or no action {action!r}.")
    if request.form.get("confirm") != "yes":
        return page("confirm_device.html", device=device, state=state_of(device), action=action)
    return act(who, lambda: change_device(device_id, action), url_for("console.fleet"))


def act(who: sessions.SignedIn, action: Callable[[], object], then: str) -> Response:
    """Run a confirmed action as the signed-in token (the audit trail names it) and go to ``then``;
    a refusal (the API's :class:`ApiError`: 404, 409...) shows its reason and changes nothing."""
    g.actor = SimpleNamespace(name=who.name)
    try:
        action()
    except ApiError as err:
        db().rollback()
        return page("error.html", status=err.status, message=str(err))
    return redirect(then, code=303)
