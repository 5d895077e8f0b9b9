"""The Flask app factory: ``create_app(config=None)``.

Example:
    >>> app = create_app({"DATA_DIR": "/tmp/edgeship", "CONTROLLER_ENABLED": False})
    >>> app.test_client().get("/healthz").json
    {'status': 'ok'}
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from flask import Flask

from rollout_server import body_limits, hot_cache, rate_limits
from rollout_server.artifact_store import app_store
from rollout_server.auth import ensure_first_tokens
from rollout_server.config import apply_config
from rollout_server.counters import ensure_counters
from rollout_server.db import init_db, session_scope, startup_lock
from rollout_server.errors import register_error_handlers

#: API modules under ``rollout_server.api``, each with a blueprint named ``bp``.
BLUEPRINTS = ("health", "devices", "reports", "releases", "artifacts", "rollouts", "admin", "webhooks",
              "metrics", "docs")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults → ``EDGESHIP_*`` environment → ``config``.

    On first start it creates the tables and an admin and an enrollment token, written to
    ``DATA_DIR/first-start-tokens.txt`` (see :func:`rollout_server.auth.ensure_first_tokens`).
    A missing or empty database in a data directory that was in use raises
    :class:`rollout_server.db_files.StartupRefused` instead. Every start deletes what crashed
    uploads left in the artifact store.
    """
    app = Flask("rollout_server")
    apply_config(app, config)
    Path(app.config["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    register_error_handlers(app)
    rate_limits.init_app(app)  # first: a locked-out client is refused before anything else
    body_limits.init_app(app)
    init_db(app)
    hot_cache.init_app(app)
    with session_scope(app) as session, startup_lock(session):
        app.extensions["edgeship.first_start_file"] = ensure_first_tokens(app, session)
        ensure_counters(session)
        session.commit()
    _clean_staging(app)
    for name in BLUEPRINTS:
        app.register_blueprint(importlib.import_module(f"rollout_server.api.{name}").bp)
    from rollout_server.console import bp as console

    app.register_blueprint(console)
    if app.config["CONTROLLER_ENABLED"]:
        from rollout_server.controller import start_controller
        from rollout_server.notifications.dispatcher import start_dispatcher

        start_controller(app)
        start_dispatcher(app)
    return app


def _clean_staging(app: Flask) -> None:
    """Delete crashed uploads' leftovers; a store that cannot be used is logged, not fatal (the
    rest of the API works, and ``/readyz`` names it)."""
    try:
        removed = app_store(app).clean_leftovers()
    except OSError as err:
        app.logger.error("artifact store unusable at start: %s", err)
        return
    if removed:
        app.logger.warning("removed %d leftover(s) of interrupted uploads from the artifact store", removed)
