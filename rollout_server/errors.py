"""API errors: one JSON shape ``{"error": ..., "detail": ...}`` for every 4xx and 5xx.

Storage faults are not bugs: a SQLite lock held past the busy timeout, a database file that is
gone or unreadable, an artifact directory the server cannot write. They answer 503 with a reason
and ``Retry-After`` (:func:`storage_fault`), so clients back off and operators see which store
failed, instead of a 500 that looks like a server bug. A real bug is still a 500, logged with its
traceback and never sent one.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, jsonify
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

#: seconds a client should wait before retrying after a lock timeout, and after other faults.
RETRY_AFTER_BUSY = 5
RETRY_AFTER_UNAVAILABLE = 30


class ApiError(Exception):
    """An error the client can act on; ``status`` is its HTTP code."""

    status = 400
    error = "bad_request"
    #: seconds for a ``Retry-After`` header (None: no header)
    retry_after: int | None = None

    def __init__(self, detail: str, status: int | None = None, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status or self.status
        self.error = error or self.error


class NotFound(ApiError):
    status, error = 404, "not_found"


class Conflict(ApiError):
    status, error = 409, "conflict"


class Unauthorized(ApiError):
    status, error = 401, "unauthorized"


class Forbidden(ApiError):
    status, error = 403, "forbidden"


class ServiceUnavailable(ApiError):
    """503: a store the server needs cannot be used now (``error`` names which, and how)."""

    status, error = 503, "unavailable"

    def __init__(self, detail: str, error: str, retry_after: int = RETRY_AFTER_UNAVAILABLE) -> None:
        super().__init__(detail, 503, error)
        self.retry_after = retry_after


def error_body(error: str, detail: str) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def _is_dbapi_operational(err: BaseException) -> bool:
    """A driver's own OperationalError (sqlite3, psycopg): raw connections (the report writer)
    raise it without SQLAlchemy's wrapper. Matched by name, so psycopg need not be imported."""
    root = type(err).__module__.split(".")[0]
    return root in ("sqlite3", "psycopg") and any(c.__name__ == "OperationalError"
                                                  for c in type(err).__mro__)


#: words of a driver's message that mean "busy, try again": SQLite's busy timeout ran out,
#: PostgreSQL's lock_timeout, a deadlock or serialization failure (the transaction was undone).
_BUSY_WORDS = ("database is locked", "database table is locked", "lock timeout", "deadlock",
               "could not serialize", "QueuePool limit")


def storage_fault(err: BaseException) -> ServiceUnavailable | None:
    """The 503 for a storage fault (database busy or unusable, a file the server cannot read or
    write), or None if ``err`` is something else (a bug)."""
    if isinstance(err, sa_exc.DBAPIError) and type(err) in (sa_exc.OperationalError, sa_exc.DatabaseError):
        message = str(err.orig)
    elif isinstance(err, (sa_exc.TimeoutError, sa_exc.DisconnectionError)) or _is_dbapi_operational(err):
        message = str(err)
    elif isinstance(err, OSError) and not isinstance(err, ConnectionError):  # not a socket's
        reason = err.strerror or type(err).__name__
        return ServiceUnavailable(f"the server cannot read or write its files ({reason}); retry later",
                                  "storage_unavailable")
    else:
        return None
    first = message.strip().splitlines()[0] if message.strip() else type(err).__name__
    if any(word.lower() in message.lower() for word in _BUSY_WORDS):
        return ServiceUnavailable(f"the database is busy ({first}); retry later", "database_busy",
                                  RETRY_AFTER_BUSY)
    return ServiceUnavailable(f"the database cannot be used ({first}); retry later",
                              "database_unavailable")


def register_error_handlers(app: Flask) -> None:
    """Every error leaves as JSON; a bug is a 500 with no traceback in the body."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        response = jsonify(error_body(err.error, err.detail))
        if err.retry_after is not None:
            response.headers["Retry-After"] = str(err.retry_after)
        return response, err.status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        name = (err.name or "error").lower().replace(" ", "_")
        response = jsonify(error_body(name, err.description or name))
        for key, value in err.get_headers():  # e.g. Allow on a 405 (RFC 9110)
            if key.lower() != "content-type":
                response.headers[key] = value
        return response, err.code or 500

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        fault = storage_fault(err)
        if fault is not None:
            current_app.logger.warning("%s: %s: %s", fault.error, type(err).__name__, err)
            return _api_error(fault)
        app.logger.exception("unhandled error")
        return jsonify(error_body("internal_error", "the server failed; see its log")), 500
