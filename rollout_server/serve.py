"""``edgeship server``: the app under uvicorn, over HTTP or HTTPS, in one process or in K.

The event loop receives every request whole (headers under a deadline, the body counted against
its route's limit and under a deadline) before a thread of a bounded pool runs the Flask app on
it, so slow or stalled clients hold sockets, never threads (:mod:`rollout_server.http_protocol`,
:mod:`rollout_server.wsgi_bridge`; why: docs/decisions/2026-12-07-server-worker-model.md).
One worker is one process that also runs the controller loop; ``--workers K`` starts K worker
processes under uvicorn's supervisor, each with its own controller loop.
"""

from __future__ import annotations

import functools
import importlib
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeship.contract.errors import EdgeshipError
from rollout_server.auth import FIRST_START_FILE
from rollout_server.config import DEFAULTS

#: requests a client may send on one keep-alive connection before the server closes it (as
#: nginx's ``keepalive_requests`` and Apache's ``MaxKeepAliveRequests``), so long-lived clients
#: spread over the workers again (docs/decisions/2026-12-03-keepalive-bound.md).
KEEPALIVE_REQUESTS = 100
#: how long an idle keep-alive connection stays open between two requests (a proxy in front
#: must give its upstream connections less: deploy/edgeship-nginx.conf).
KEEPALIVE_IDLE_SECONDS = 5
#: how long a stopping server waits for requests in flight before closing their connections.
GRACEFUL_SHUTDOWN_SECONDS = 10
#: how long uvicorn's supervisor waits for a busy worker's ping before it replaces the worker.
WORKER_HEALTHCHECK_SECONDS = 30


class ServerSettingsError(EdgeshipError):
    """``edgeship server`` cannot start with these settings (the message says which)."""


def wsgi_app(config: dict[str, Any] | None = None):
    """The Flask app (``rollout_server.serve:wsgi_app``), settings from ``EDGESHIP_*``."""
    from rollout_server.app import create_app

    return create_app(config)


def bridged(app: Any):
    """``app`` (a WSGI Flask app) behind the bridge, with its settings (defaults for the
    bridge's own keys when ``app`` is not edgeship's, as the benchmark's bare app)."""
    from rollout_server.request_body import BodyPolicy
    from rollout_server.wsgi_bridge import WsgiBridge, flask_route_limits

    settings = _settings(app)
    return WsgiBridge(app, flask_route_limits(app, settings),
                      BodyPolicy(float(settings["BODY_TIMEOUT_SECONDS"]),
                                 float(settings["BODY_MIN_BYTES_PER_SECOND"])),
                      threads=int(settings["SERVER_THREADS"]))


def worker_app(factory: str):
    """uvicorn's app factory in a worker process: the WSGI app ``factory`` ("module:function",
    called without arguments) makes, bridged."""
    module, _, name = factory.partition(":")
    return bridged(getattr(importlib.import_module(module), name)())


def check_tls(cert: str | None, key: str | None) -> tuple[str, str] | None:
    """Both PEM files loadable as a certificate chain and its key, or neither given.

    Raises:
        ServerSettingsError: only one given, or they do not load (missing, not PEM, mismatched).
    """
    if not cert and not key:
        return None
    if not cert or not key:
        raise ServerSettingsError("--tls-cert and --tls-key go together: give both PEM files, or neither")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ServerSettingsError(f"cannot use --tls-cert {cert} with --tls-key {key}: {reason}") from None
    return str(Path(cert).resolve()), str(Path(key).resolve())


def serve(host: str, port: int, workers: int, db_url: str | None, data_dir: str,
          trusted_keys: list[str] | None = None, tls_cert: str | None = None,
          tls_key: str | None = None) -> None:
    """Start the server in the foreground; prints where the first-start tokens are.

    Settings go through ``EDGESHIP_*`` environment variables so worker processes see them.

    Raises:
        ServerSettingsError: unusable TLS files.
    """
    tls = check_tls(tls_cert, tls_key)
    os.environ["EDGESHIP_DATA_DIR"] = data_dir
    if trusted_keys:
        os.environ["EDGESHIP_TRUSTED_KEYS"] = os.pathsep.join(str(Path(k).resolve()) for k in trusted_keys)
    if db_url:
        os.environ["EDGESHIP_DATABASE_URL"] = db_url
    # Creates the tables and first-start tokens once, before workers start; with workers, each
    # worker runs its own controller loop (windows are claimed, so no rollout advances twice).
    app = wsgi_app({"CONTROLLER_ENABLED": workers <= 1})
    tokens = app.extensions.get("edgeship.first_start_file")
    if tokens:
        print(f"first start: admin and enrollment tokens written to {tokens}", flush=True)
    else:
        print(f"tokens from the first start are in {Path(data_dir).resolve() / FIRST_START_FILE}", flush=True)
    print(f"edgeship server on {'https' if tls else 'http'}://{host}:{port} "
          f"({app.config['DATABASE_URL'].split('://')[0]}, {workers} worker{'s' if workers > 1 else ''})",
          flush=True)
    run(app, host, port, workers, tls)


def run(app: Any, host: str, port: int, workers: int, tls: tuple[str, str] | None,
        factory: str = "rollout_server.serve:wsgi_app") -> None:
    """Serve the WSGI ``app`` until stopped: in this process, or in ``workers`` processes that each
    make their own with ``factory`` ("module:function")."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from rollout_server.http_protocol import ServerConfig

    settings = _settings(app)
    target: Any = functools.partial(worker_app, factory) if workers > 1 else bridged(app)
    config = ServerConfig(
        target, factory=workers > 1, host=host, port=port, workers=workers,
        header_timeout_seconds=float(settings["HEADER_TIMEOUT_SECONDS"]),
        keepalive_requests=KEEPALIVE_REQUESTS, timeout_keep_alive=KEEPALIVE_IDLE_SECONDS,
        ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None,
        ssl_context_factory=_tls_context if tls else None,
        # X-Forwarded-For is read by the app, and only from trusted proxies (client_ip.py)
        proxy_headers=False, server_header=False, access_log=False, log_level="warning",
        lifespan="off", ws="none", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )
    if workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()


def _tls_context(_config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context for the certificate and key, TLS 1.2 at least."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _settings(app: Any) -> Mapping[str, Any]:
    return {**DEFAULTS, **{k: v for k, v in app.config.items() if k in DEFAULTS}}
