"""Request body limits per route, enforced while the body is read, and a bound on JSON nesting.

Why per route: a single app-wide limit has to be the largest body any route takes (a 2 GiB
release), so an unauthenticated ``POST /v1/devices/register`` could make the server read
hundreds of megabytes before refusing them. Here each route has its own limit
(:data:`ROUTE_LIMITS`, config keys; ``MAX_REQUEST_BYTES`` for every other route) and:

* a ``Content-Length`` over it is refused with 413 before a byte of the body is read;
* a chunked body (no ``Content-Length``) is read through werkzeug's limited stream set one byte
  past the limit, so it is counted as it arrives and at most ``limit + 1`` bytes are ever held;
  one byte over is a 413 (:func:`read_body`).

Why a depth bound: Python's and msgspec's JSON decoders recurse, and ~1,000 levels of ``[`` (a
few kB) raise RecursionError, which was a 500 with a traceback per request. No body of this
API nests deeper than 6 levels, so :func:`check_json_depth` refuses more than
``MAX_JSON_DEPTH`` with a 400 before anything is decoded.
"""

from __future__ import annotations

import re

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from rollout_server.errors import ApiError, error_body

#: the routes (endpoints) whose body limit is not ``MAX_REQUEST_BYTES``, and their config keys.
ROUTE_LIMITS = {
    "devices.register": "MAX_REGISTER_BYTES",
    "reports.post_reports": "MAX_REPORT_BYTES",
    "releases.publish_release": "MAX_RELEASE_BYTES",
}
DEFAULT_LIMIT = "MAX_REQUEST_BYTES"
#: the one route whose body is parsed as it streams in (multipart), not read by read_body.
STREAMED = "releases.publish_release"


class PayloadTooLarge(ApiError):
    status, error = 413, "payload_too_large"


class JsonTooDeep(ApiError):
    status, error = 400, "json_too_deep"


def init_app(app: Flask) -> None:
    """Check every request's declared length against its route's limit before the view runs,
    and arm the stream so a chunked body stops one byte past it (``MAX_CONTENT_LENGTH``, the
    app-wide default, is ``MAX_REQUEST_BYTES``: see :func:`rollout_server.config.apply_config`)."""
    app.before_request(_arm_limit)
    app.register_error_handler(RequestEntityTooLarge, _werkzeug_too_large)


def _werkzeug_too_large(_: RequestEntityTooLarge) -> tuple[Response, int]:
    """Werkzeug's own 413 (multipart parser, ``MAX_CONTENT_LENGTH``) answered as ours, with the
    route's limit in the reason."""
    err = too_large()
    return jsonify(error_body(err.error, err.detail)), err.status


def body_limit() -> int:
    """The byte limit of the current request's route."""
    return current_app.config[ROUTE_LIMITS.get(request.endpoint or "", DEFAULT_LIMIT)]


def too_large() -> PayloadTooLarge:
    """The 413 for the current request's route."""
    limit = body_limit()
    if request.endpoint == STREAMED:  # werkzeug's multipart parser has limits of its own
        return PayloadTooLarge(
            f"the upload is over a limit: {limit} bytes in all, {request.max_form_memory_size} bytes "
            f"for a part that is not a file (send manifest.json as a file), {request.max_form_parts} parts")
    return PayloadTooLarge(f"the request body is over this route's limit of {limit} bytes")


def _arm_limit() -> None:
    limit = body_limit()
    if request.content_length is not None and request.content_length > limit:
        raise too_large()
    # Bodies read whole (read_body) stop one byte past the limit, so a chunked body of exactly
    # `limit` bytes is told from a longer one; the multipart publish streams its files, and
    # werkzeug's parser raises RequestEntityTooLarge at the limit itself.
    request.max_content_length = limit if request.endpoint == STREAMED else limit + 1



def read_body() -> bytes:
    """The request body, at most the route's limit; 413 past it (chunked bodies included)."""
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise too_large() from None
    if len(raw) > body_limit():
        raise too_large()
    return raw


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKETS_AS_SQUARE = bytes.maketrans(b"{}", b"[]")


def check_json_depth(raw: bytes, max_depth: int | None = None) -> None:
    """400 ``json_too_deep`` if the JSON text ``raw`` nests arrays and objects deeper than
    ``max_depth`` (default: the app's ``MAX_JSON_DEPTH``); malformed JSON is left to the parser.

    Linear time in C: strings are cut out (escapes first, so ``\\"`` ends none), only brackets
    kept, and innermost pairs removed once per level allowed; a pair still left is deeper.
    """
    limit = current_app.config["MAX_JSON_DEPTH"] if max_depth is None else max_depth
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the common case: too few to nest deeper
        return
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)
    brackets = _STRING.sub(b"", raw).translate(_BRACKETS_AS_SQUARE, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):  # nothing nested is left (or unbalanced: not JSON)
            return
        brackets = shorter
    if b"[]" in brackets:
        raise too_deep(limit)


def too_deep(limit: int | None = None) -> JsonTooDeep:
    limit = current_app.config["MAX_JSON_DEPTH"] if limit is None else limit
    return JsonTooDeep(f"the JSON body nests arrays and objects deeper than {limit} levels")
