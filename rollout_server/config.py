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
    "MAX_RELEASE_BYTES": 2 * 1024**3,
    "REPORT_INTERVAL_SECONDS": 30,
    # How stale the per-process assignment cache may be across workers and replicas (seconds;
    # 0 reads the database on every poll). See rollout_server/hot_cache.py.
    "ASSIGNMENT_CACHE_SECONDS": 1.0,
    # Analysis window and how often the controller looks at running rollouts.
    "ANALYSIS_WINDOW_SECONDS": 60,
    "CONTROLLER_INTERVAL_SECONDS": 10,
    # Start the controller loop inside the server process (off in tests, which step it).
    "CONTROLLER_ENABLED": True,
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
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_RELEASE_BYTES"]
