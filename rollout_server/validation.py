"""Checking JSON request bodies: a bad field is a 400 naming the field, never a 500; a body
over its route's limit is a 413 and one nested too deep a 400, both before it is decoded."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from flask import request

from rollout_server.body_limits import check_json_depth, read_body, too_deep
from rollout_server.errors import ApiError

NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*\Z")  # \Z: "$" would let a trailing newline through
#: device classes as docs/protocol.md spells them (``rpi4``, ``linux-x86_64``): names that may hold ``_``.
DEVICE_CLASS = re.compile(r"^[a-z0-9]+([_-][a-z0-9]+)*\Z")


#: a JSON escape of the NUL character (an odd number of backslashes before ``u0000``).
_NUL_ESCAPE = re.compile(rb"(?:^|[^\\])(?:\\\\)*\\u0000")


def refuse_nul(raw: bytes) -> None:
    """400 if a JSON string in ``raw`` holds the NUL character: PostgreSQL cannot store it in
    text (that would be a 500 at the insert), and no name, id or reason needs it."""
    if b"\\u0000" in raw and _NUL_ESCAPE.search(raw):
        raise ApiError("strings must not contain the NUL character (\\u0000)")


def request_json() -> Any:
    """The request's body parsed as JSON, None when there is none or it is not JSON.

    Read within the route's byte limit (413 past it, chunked bodies too) and refused with a 400
    if a string in it holds NUL (:func:`refuse_nul`) or it nests deeper than ``MAX_JSON_DEPTH``
    (:mod:`rollout_server.body_limits`): both before it is decoded.
    """
    raw = read_body()
    refuse_nul(raw)
    check_json_depth(raw)
    try:
        return request.get_json(silent=True)
    except RecursionError:  # a backstop: check_json_depth refuses such bodies before this
        raise too_deep() from None


def json_body() -> dict[str, Any]:
    """The request's JSON object body."""
    data = request_json()
    if not isinstance(data, dict):
        raise ApiError("the body must be a JSON object (Content-Type: application/json)")
    return data


def field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], *, required: bool = True,
          default: Any = None) -> Any:
    """``data[key]`` checked against ``kind`` (bools are never ints here)."""
    if key not in data or data[key] is None:
        if required:
            raise ApiError(f"field {key!r} is required")
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ApiError(f"field {key!r} must be {_names(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise ApiError(f"field {key!r} must be {_names(kinds)}")
    return value


def count(data: dict[str, Any], key: str, *, required: bool = True, maximum: int = 10**12) -> int:
    value = field(data, key, int, required=required, default=0)
    if not 0 <= value <= maximum:
        raise ApiError(f"field {key!r} must be between 0 and {maximum}")
    return value


def short_text(data: dict[str, Any], key: str, *, max_length: int = 64, required: bool = True,
               pattern: re.Pattern[str] | None = None) -> str | None:
    value = field(data, key, str, required=required)
    if value is None:
        return None
    if not value or len(value) > max_length:
        raise ApiError(f"field {key!r} must be 1 to {max_length} characters")
    if pattern is not None and not pattern.match(value):
        raise ApiError(f"field {key!r} has a bad format")
    return value


def utc_time(value: str) -> dt.datetime:
    """An ISO 8601 time as an aware UTC datetime (no offset means UTC); ValueError if it is not one.

    Converted to UTC, not only tagged: SQLite keeps a datetime's wall time and drops its offset,
    so ``10:00+02:00`` must be stored as ``08:00``.
    """
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.timezone.utc)
    try:
        return parsed.astimezone(dt.timezone.utc)
    except OverflowError:  # year 1 or 9999 pushed out of range by the offset
        raise ValueError(f"{value!r} is out of range in UTC") from None


def timestamp(data: dict[str, Any], key: str) -> dt.datetime:
    value = field(data, key, str)
    try:
        return utc_time(value)
    except ValueError:
        raise ApiError(f"field {key!r} must be an ISO 8601 time") from None


def _names(kinds: tuple[type, ...]) -> str:
    labels = {str: "a string", int: "an integer", float: "a number", dict: "an object",
              list: "a list", bool: "a boolean"}
    return " or ".join(labels.get(k, k.__name__) for k in kinds)
