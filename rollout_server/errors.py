"""API errors: one JSON shape ``{"error": ..., "detail": ...}`` for every 4xx and 5xx."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """An error the client can act on; ``status`` is its HTTP code."""

    status = 400
    error = "bad_request"

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


def error_body(error: str, detail: str) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def register_error_handlers(app: Flask) -> None:
    """Every error leaves as JSON; a bug is a 500 with no traceback in the body."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return jsonify(error_body(err.error, err.detail)), err.status

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
        app.logger.exception("unhandled error")
        return jsonify(error_body("internal_error", "the server failed; see its log")), 500
