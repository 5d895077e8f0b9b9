"""The console's reading pages: the fleet, models and releases, rollouts (and the rollout page's
live data). Registered on :data:`rollout_server.console.pages.bp`."""

from __future__ import annotations

import datetime as dt
import math

from flask import Response, current_app, g, jsonify, redirect, request, send_file, url_for
from sqlalchemy import select

from rollout_server import clock
from rollout_server.api.rollouts import status_body, summary
from rollout_server.artifact_store import app_store
from rollout_server.console.fleet import fleet_view
from rollout_server.console.pages import bp, page, signed_in
from rollout_server.console.releases import model_view, models_view, release_view
from rollout_server.console.rollout_view import allowed_actions, audit_trail, stage_timeline
from rollout_server.db import db
from rollout_server.models import Rollout
from rollout_server.window_points import rollout_series


@bp.get("/")
def home() -> Response:
    return redirect(url_for("console.fleet"), code=303)


@bp.get("/fleet")
@signed_in
def fleet() -> Response:
    config = current_app.config
    recent = dt.timedelta(minutes=float(config["CONSOLE_RECENT_MINUTES"]))
    silent_after = dt.timedelta(minutes=float(config["CONSOLE_SILENT_MINUTES"]))
    every = dt.timedelta(seconds=float(config["ANALYSIS_WINDOW_SECONDS"]))
    view = fleet_view(db(), clock.now(), recent=recent, silent_after=silent_after, snapshot_age=2 * every)
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


@bp.get("/models/<name>/<version>/figures/<file>")
@signed_in
def release_figure(name: str, version: str, file: str) -> Response:
    """One of the release's report figures (PNG), named by the signed manifest: nothing else in
    the artifact store is reachable here."""
    view = release_view(db(), name, version)
    figure = next((f for f in view["figures"] if f["file"] == file), None) if view else None
    store = app_store(current_app)
    if figure is None or not store.has(figure["sha256"]):
        return page("error.html", status=404, message=f"No figure {file!r} in {name} {version}.")
    response = send_file(store.path_for(figure["sha256"]), mimetype="image/png", conditional=True,
                         etag=figure["sha256"], max_age=86400)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response


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
    return page("rollout.html", rollout=status_body(row, per_window=True), timeline=stage_timeline(db(), row),
                audit=audit_trail(db(), rollout_id), actions=allowed_actions(row),
                may_act=g.console.may("operator"))


@bp.get("/rollouts/<int(max=2147483647):rollout_id>/live")
@signed_in
def rollout_live(rollout_id: int) -> Response:
    """What the rollout page's script redraws every few seconds: the summary, the series (only the
    windows ending at ``?since=`` epoch seconds or later when given), the verdicts."""
    row = db().get(Rollout, rollout_id)
    if row is None:
        return jsonify(error="not_found", detail=f"no rollout {rollout_id}"), 404
    since = request.args.get("since", type=float)
    if since is not None and not math.isfinite(since):
        since = None
    body = status_body(row, limit=50, per_window=True)
    series = {"window_seconds": float(current_app.config["ANALYSIS_WINDOW_SECONDS"]), "since": since,
              **rollout_series(db(), rollout_id, since=since)}
    return jsonify(summary=summary(row), devices=body["devices"], verdicts=body["verdicts"], series=series,
                   actions=allowed_actions(row))

