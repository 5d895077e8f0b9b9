"""Server configuration: defaults → environment (``EDGESHIP_*``) → explicit overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.contract.reports import MAX_REPORT_BYTES

DEFAULTS: dict[str, Any] = {
    # SQLAlchemy URL; the SQLite file lives in the data directory when left out.
    "DATABASE_URL": None,
    # Where the server keeps its SQLite file, artifacts and first-start tokens.
    "DATA_DIR": "edgeship-data",
    # Trusted publisher public keys (PEM files); releases signed by others are refused.
    "TRUSTED_KEYS": [],
    "MAX_REPORT_BYTES": MAX_REPORT_BYTES,
    # A report's window must lie within [now - max age, now + skew] (seconds): the age bounds
    # how long an agent may keep reports while offline; the skew, how far ahead its clock may be.
    "REPORT_MAX_AGE_SECONDS": 14 * 86400,
    "REPORT_CLOCK_SKEW_SECONDS": 300,
    # The most inferences (and errors) a device may report per second of window: a physical cap.
    "MAX_INFERENCES_PER_SECOND": 10_000,
    # Request body limits, per route, enforced while reading (rollout_server/body_limits.py):
    # a release (POST /v1/releases) only; an unauthenticated registration; any other body.
    "MAX_RELEASE_BYTES": 2 * 1024**3,
    "MAX_REGISTER_BYTES": 16 * 1024,
    "MAX_REQUEST_BYTES": 64 * 1024,
    # How deeply a JSON body may nest arrays and objects (400 past it; the API needs 6).
    "MAX_JSON_DEPTH": 32,
    # Per-client limits (rollout_server/rate_limits.py; 0 turns one off). Registrations: a burst,
    # then a steady rate per minute. Failed authentications: this many within the window lock
    # the client's new credentials and registrations out for up to the window.
    "REGISTER_BURST": 1000,
    "REGISTER_RATE_PER_MINUTE": 600,
    "AUTH_FAILURE_LIMIT": 100,
    "AUTH_FAILURE_WINDOW_SECONDS": 300,
    # Clients (and working credentials) each process remembers; the least recently seen go first.
    "RATE_LIMIT_MAX_CLIENTS": 65_536,
    # IPv6 clients are counted per network of this prefix length (a host may hold a whole /64).
    "RATE_LIMIT_IPV6_PREFIX": 64,
    # Proxies in front of the server that append to X-Forwarded-For (0: the header is ignored;
    # more than there really are lets clients pick their own address).
    "TRUSTED_PROXY_COUNT": 0,
    # How long a SQLite write waits for another writer's lock before the request is answered
    # 503 database_busy with Retry-After (seconds).
    "DATABASE_BUSY_TIMEOUT_SECONDS": 30,
    "REPORT_INTERVAL_SECONDS": 30,
    # How stale the per-process assignment cache may be across workers and replicas (seconds;
    # 0 reads the database on every poll). See rollout_server/hot_cache.py.
    "ASSIGNMENT_CACHE_SECONDS": 1.0,
    # Analysis window and how often the controller looks at running rollouts.
    "ANALYSIS_WINDOW_SECONDS": 60,
    "CONTROLLER_INTERVAL_SECONDS": 10,
    # Each device's baseline: its stable-release reports this long before a rollout (0: none).
    "BASELINE_SECONDS": 86400,
    # ... of which each device's latest this many at most: a sample of it, read with an index.
    "BASELINE_REPORTS": 120,
    # Start the controller loop inside the server process (off in tests, which step it).
    "CONTROLLER_ENABLED": True,
    # `edgeship server` (rollout_server/serve.py): a request's headers must arrive within this
    # (seconds, else 408 and the connection closed); its body within the grace plus 1 s per
    # BODY_MIN_BYTES_PER_SECOND received (as Apache's mod_reqtimeout). Threads per process run
    # the app on fully received requests only.
    "HEADER_TIMEOUT_SECONDS": 20,
    "BODY_TIMEOUT_SECONDS": 20,
    "BODY_MIN_BYTES_PER_SECOND": 500,
    "SERVER_THREADS": 8,
    # Devices (docs/protocol.md §2): "auto" admits a newly registered device at once; "manual"
    # keeps it pending (403 device_pending) until an operator accepts it. An enrollment token may
    # say otherwise for the devices it enrolls.
    "DEVICE_ADMISSION": "auto",
    # How often a pending device is told to ask again (its Retry-After, seconds).
    "PENDING_RETRY_SECONDS": 60,
    # After a credential rotation the old credential works until the new one is first used, at
    # most this long (seconds); a credential older than the max age is told to rotate (0: never).
    "CREDENTIAL_GRACE_SECONDS": 7 * 86400,
    "CREDENTIAL_MAX_AGE_SECONDS": 90 * 86400,
    # The console (/console): a session ends this long after sign-in, or after this long unused;
    # the fleet page counts reports of the recent window and calls devices unseen this long silent.
    "CONSOLE_SESSION_HOURS": 8,
    "CONSOLE_IDLE_MINUTES": 30,
    "CONSOLE_RECENT_MINUTES": 15,
    "CONSOLE_SILENT_MINUTES": 10,
    # Webhooks (rollout_server/notifications): each process's dispatcher runs when the controller
    # does (CONTROLLER_ENABLED) and looks for due deliveries this often (seconds); a POST gets this
    # long (seconds); a failed delivery is retried WEBHOOK_MAX_ATTEMPTS times in all, waiting
    # base * 2**(n-1) times a jitter in [0.5, 1] after the n-th failure.
    "WEBHOOK_DISPATCH_INTERVAL_SECONDS": 2,
    "WEBHOOK_TIMEOUT_SECONDS": 5,
    "WEBHOOK_MAX_ATTEMPTS": 8,
    "WEBHOOK_RETRY_BASE_SECONDS": 30,
    # Hosts webhooks may POST to (exact names, or ".example.com" for its subdomains); empty: any.
    "WEBHOOK_ALLOWED_HOSTS": [],
    # The key that seals webhook secrets in the database (urlsafe base64 of 32 bytes; the same on
    # every replica); None: DATA_DIR/webhook-secrets.key, created on first use.
    "WEBHOOK_SECRETS_KEY": None,
    # The server's wall clock for token expiry and credential ages: None is the real one; tests
    # pass a callable returning an aware UTC datetime (rollout_server/clock.py).
    "CLOCK": None,
}


def apply_config(app: Any, overrides: dict[str, Any] | None) -> None:
    """Fill ``app.config``: defaults, then ``EDGESHIP_<KEY>`` environment values (JSON-decoded
    where they parse), then ``overrides``. Derives the database URL from ``DATA_DIR``."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("EDGESHIP")
    if overrides:
        app.config.from_mapping(overrides)
    data_dir = Path(app.config["DATA_DIR"]).resolve()
    app.config["DATA_DIR"] = str(data_dir)
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = f"sqlite:///{data_dir / 'edgeship.db'}"
    # the app-wide limit is the smallest; each route's own is set per request (body_limits.py)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_REQUEST_BYTES"]
    if isinstance(app.config["WEBHOOK_ALLOWED_HOSTS"], str):  # EDGESHIP_WEBHOOK_ALLOWED_HOSTS=a.com,.b.org
        hosts = app.config["WEBHOOK_ALLOWED_HOSTS"].split(",")
        app.config["WEBHOOK_ALLOWED_HOSTS"] = [host.strip() for host in hosts if host.strip()]
    if app.config["WEBHOOK_SECRETS_KEY"]:  # refused at start, not at the first webhook
        from rollout_server.notifications.sealing import decode_key

        decode_key(app.config["WEBHOOK_SECRETS_KEY"])
    if app.config["DEVICE_ADMISSION"] not in ("auto", "manual"):
        raise ValueError(f"DEVICE_ADMISSION must be 'auto' or 'manual', not "
                         f"{app.config['DEVICE_ADMISSION']!r}")
