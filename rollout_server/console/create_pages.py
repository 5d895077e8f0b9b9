"""The console's "new rollout" form: what ``edgeship rollout start`` takes, in a page (stages,
approval gates, schedule, canary target, dry-run guards), created through the API's own function
(:func:`rollout_server.api.rollouts.create_rollout`), so every check and refusal is the API's.

Fields are written as the CLI writes them (``10,50,100``; ``mon-fri 09:00-17:00 Europe/Berlin``;
``app_version>=4.2``), one window or condition per line. A refused form comes back filled in,
with the reason.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flask import Response, g, redirect, request, url_for
from sqlalchemy import select

from rollout_server.analysis.spec import GuardSpec
from rollout_server.api.rollouts import create_rollout
from rollout_server.console import sessions
from rollout_server.console.pages import bp, page, refuse_operator_form, signed_in
from rollout_server.db import db
from rollout_server.errors import ApiError
from rollout_server.models import Model, Release
from rollout_server.targeting import TargetError, parse_expression
from rollout_server.workflow_cli import parse_window, with_dry_run

FIELDS = ("release", "stages", "min_minutes", "min_samples", "approve_before", "start_at", "windows",
          "target")


def candidates(session: Any) -> list[dict[str, str]]:
    """Releases that could be rolled out: of a model with a stable release, not that release."""
    rows = session.execute(select(Model.name, Release.version, Model.stable_release_id, Release.id)
                           .join(Model, Model.id == Release.model_id)
                           .where(Model.stable_release_id.is_not(None))
                           .order_by(Model.name, Release.id.desc()))
    return [{"value": f"{name}/{version}", "label": f"{name} {version}"}
            for name, version, stable_id, release_id in rows if release_id != stable_id]


def guard_names() -> list[str]:
    """The default guards' names (what the dry-run boxes offer)."""
    return [item.get("name") or str(item["metric"]) for item in GuardSpec.default().to_dict()["guards"]]


def body_from(form: Any) -> dict[str, Any]:
    """The API body the form describes.

    Raises:
        ValueError: a field that cannot be read, naming it.
    """
    model, _, version = form.get("release", "").partition("/")
    if not model or not version:
        raise ValueError("choose a release to roll out")
    try:
        percents = [float(p) for p in form.get("stages", "").split(",") if p.strip()]
        minutes, samples = float(form.get("min_minutes") or 60), int(form.get("min_samples") or 5000)
    except ValueError:
        raise ValueError("stages are comma-separated percents; minutes and inferences are numbers") from None
    body: dict[str, Any] = {"model": model, "candidate_version": version, "stages": [
        {"percent": p, "min_duration_seconds": minutes * 60, "min_samples": samples} for p in percents]}
    if form.get("approve_before", "").strip():
        try:
            body["approve_before"] = [float(p) for p in form["approve_before"].split(",")]
        except ValueError:
            raise ValueError("approve before: comma-separated percents, e.g. 50,100") from None
    if form.get("start_at", "").strip():
        body["start_at"] = form["start_at"].strip()
    windows = [line.strip() for line in form.get("windows", "").splitlines() if line.strip()]
    if windows:
        body["windows"] = [parse_window(line) for line in windows]
    conditions = [line.strip() for line in form.get("target", "").splitlines() if line.strip()]
    if conditions:
        try:
            body["target"] = [parse_expression(line) for line in conditions]
        except TargetError as err:
            raise ValueError(f"target: {err}") from None
    dry = form.getlist("dry_run") if hasattr(form, "getlist") else []
    if dry:
        body["guards"] = with_dry_run(None, dry, shadow=False)
    return body


@bp.get("/rollouts/new")
@signed_in
def new_rollout() -> Response:
    if not g.console.may("operator"):
        return page("error.html", status=403, message="Only an operator or admin may start a rollout.")
    filled = {"stages": "10,50,100", "min_minutes": "60", "min_samples": "5000"}
    return form_page(filled)


def form_page(filled: dict[str, Any], error: str | None = None, status: int = 200) -> Response:
    return page("new_rollout.html", status=status, filled=filled, error=error, releases=candidates(db()),
                guards=guard_names())


@bp.post("/rollouts/new")
@signed_in
def create() -> Response:
    who: sessions.SignedIn = g.console
    refused = refuse_operator_form(who, "start rollouts")
    if refused is not None:
        return refused
    filled = {name: request.form.get(name, "") for name in FIELDS}
    filled["dry_run"] = request.form.getlist("dry_run")
    try:
        body = body_from(request.form)
    except ValueError as err:
        return form_page(filled, str(err), 400)
    g.actor = SimpleNamespace(name=who.name)  # whom the audit trail names
    try:
        rollout = create_rollout(body, who.name)
    except ApiError as err:
        db().rollback()
        return form_page(filled, err.detail, err.status)
    return redirect(url_for("console.rollout", rollout_id=rollout.id), code=303)
