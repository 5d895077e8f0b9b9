"""``edgeship server``: run the app under gunicorn (several workers) or werkzeug (one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rollout_server.auth import FIRST_START_FILE


def wsgi_app(config: dict[str, Any] | None = None):
    """The WSGI app for gunicorn (``rollout_server.serve:wsgi_app()``)."""
    from rollout_server.app import create_app

    return create_app(config)


def serve(host: str, port: int, workers: int, db_url: str | None, data_dir: str,
          trusted_keys: list[str] | None = None) -> None:
    """Start the server in the foreground; prints where the first-start tokens are.

    Settings go through ``EDGESHIP_*`` environment variables so gunicorn workers see them.
    """
    os.environ["EDGESHIP_DATA_DIR"] = data_dir
    if trusted_keys:
        os.environ["EDGESHIP_TRUSTED_KEYS"] = os.pathsep.join(str(Path(k).resolve()) for k in trusted_keys)
    if db_url:
        os.environ["EDGESHIP_DATABASE_URL"] = db_url
    # Creates the tables and first-start tokens once, before workers fork; with workers, each
    # worker runs its own controller loop (windows are claimed, so no rollout advances twice).
    app = wsgi_app({"CONTROLLER_ENABLED": workers <= 1})
    tokens = app.extensions.get("edgeship.first_start_file")
    if tokens:
        print(f"first start: admin and enrollment tokens written to {tokens}", flush=True)
    else:
        print(f"tokens from the first start are in {Path(data_dir).resolve() / FIRST_START_FILE}", flush=True)
    print(f"edgeship server on http://{host}:{port} ({app.config['DATABASE_URL'].split('://')[0]}, "
          f"{workers} worker{'s' if workers > 1 else ''})", flush=True)
    if workers <= 1:
        from werkzeug.serving import run_simple

        run_simple(host, port, app, threaded=True, use_reloader=False)
        return
    _gunicorn(host, port, workers)


#: requests a client may send on one keep-alive connection before the server closes it (as
#: nginx's ``keepalive_requests`` and Apache's ``MaxKeepAliveRequests`` do; gunicorn has no such
#: setting). A gunicorn worker keeps the connections it accepted, so without a bound a few
#: long-lived clients (a proxy's keep-alive pool, a load generator) may all sit on one worker
#: while the others idle; reconnecting every this many requests lets them spread again (an idle
#: worker is the first to accept) for one TCP handshake per this many requests.
KEEPALIVE_REQUESTS = 100


def _close_after_keepalive_requests(_worker: Any, request: Any) -> None:
    """gunicorn's ``pre_request`` hook: answer a connection's ``KEEPALIVE_REQUESTS``-th request
    with ``Connection: close`` (gunicorn numbers a connection's requests from 1)."""
    if request.req_number >= KEEPALIVE_REQUESTS:
        request.force_close()


def _gunicorn(host: str, port: int, workers: int) -> None:
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 4)
            self.cfg.set("accesslog", None)
            self.cfg.set("pre_request", _close_after_keepalive_requests)

        def load(self):
            return wsgi_app()

    _App().run()
