"""The console's reading pages: the fleet, models and releases, rollouts (and the rollout page's
live data). Registered on :data:`rollout_server.console.pages.bp`."""

from __future__ import annotations

import datetime as dt

from flask import Response, current_app, g, jsonify, redirect, url_for
from sqlalchemy import select

from rollout_server import clock
from rollout_server.api.rollouts import status_body, summary
from rollout_server.console.fleet import fleet_view
from rollout_server.console.pages import bp, page, signed_in
from rollout_server.console.releases import model_view, models_view, release_view
from rollout_server.console.rollout_view import allowed_actions, audit_trail, rollout_series, stage_timeline
from rollout_server.db import db
from rollout_server.models import Rollout


@bp.get("/")
def home() -> Response:
    return redirect(url_for("console.fleet"), code=303)


@bp.get("/fleet")
@signed_in
def fleet() -> Response:
    config = current_app.config
    recent = dt.timedelta(minutes=float(config["CONSOLE_RECENT_MINUTES"]))
    silent_after = dt.timedelta(minutes=float(config["CONSOLE_SILENT_MINUTES"]))
    view = fleet_view(db(), clock.now(), recent=recent, silent_after=silent_after)
    return page("fleet.html", view=view)


@bp.get("/models")
@signed_in
def models() -> Response:
    return page("models.html", models=models_view(db()))


@bp.get("/models/<name>")
@signed_in
def model(name: str) -> Response:
    view = model_view(db(), name)
    if view is None:
        return page("error.html", status=404, message=f"No model {name!r}.")
    return page("model.html", model=view)


@bp.get("/models/<name>/<version>")
@signed_in
def release(name: str, version: str) -> Response:
    view = release_view(db(), name, version)
    if view is None:
        return page("error.html", status=404, message=f"No release {name!r} {version!r}.")
    return page("release.html", release=view)


@bp.get("/rollouts")
@signed_in
def rollouts() -> Response:
    return page("rollouts.html", rollouts=[summary(r) for r in db().scalars(
        select(Rollout).order_by(Rollout.id.desc()).limit(200))])


@bp.get("/rollouts/<int(max=2147483647):rollout_id>")
@signed_in
def rollout(rollout_id: int) -> Response:
    row = db().get(Rollout, rollout_id)
    if row is None:
        return page("error.html", status=404, message=f"No rollout {rollout_id}.")
    return page("rollout.html", rollout=status_body(row), timeline=stage_timeline(db(), row),
                audit=audit_trail(db(), rollout_id), actions=allowed_actions(row),
                may_act=g.console.may("operator"))


@bp.get("/rollouts/<int(max=2147483647):rollout_id>/live")
@signed_in
def rollout_live(rollout_id: int) -> Response:
    """What the rollout page's script redraws every few seconds: the summary, the series, the verdicts."""
    row = db().get(Rollout, rollout_id)
    if row is None:
        return jsonify(error="not_found", detail=f"no rollout {rollout_id}"), 404
    body = status_body(row, limit=50)
    series = rollout_series(db(), rollout_id, clock.now(), current_app.config["ANALYSIS_WINDOW_SECONDS"])
    return jsonify(summary=summary(row), devices=body["devices"], verdicts=body["verdicts"], series=series,
                   actions=allowed_actions(row))

