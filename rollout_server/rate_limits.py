"""Per-client limits on registration and on failed authentication: 429 ``rate_limited`` with
``Retry-After`` (docs/rollout-server.md, "Per-client limits").

Token buckets per client address (:mod:`rollout_server.client_ip`, :mod:`rollout_server.buckets`):
registrations (``REGISTER_BURST``, then ``REGISTER_RATE_PER_MINUTE``) and 401s
(``AUTH_FAILURE_LIMIT`` within ``AUTH_FAILURE_WINDOW_SECONDS`` lock the address). A locked address
is refused registrations and every credential this process has not seen work, a right one too (or
guessing would go on), while credentials that worked pass: healthy devices behind the same NAT as
a misconfigured one keep going. Counts go through a :class:`~rollout_server.counter_buffer.CounterBuffer`
(a 429 costs no database write); each lockout is audited once. State is per process: with K workers
an address may get up to K times the limits (docs/decisions/2026-12-07-rate-limits.md).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, Response, current_app, request

from rollout_server.buckets import BucketTable, Outcome, retry_after_header
from rollout_server.client_ip import client_address, client_network
from rollout_server.counter_buffer import EXTENSION as COUNTER_BUFFER
from rollout_server.counter_buffer import CounterBuffer
from rollout_server.db import session_scope
from rollout_server.errors import ApiError
from rollout_server.models import utcnow

log = logging.getLogger(__name__)
EXTENSION = "edgeship.rate_limits"
#: blueprints whose routes take a device credential (artifacts: or an operator token).
DEVICE_BLUEPRINTS = frozenset({"devices", "reports", "artifacts"})
REGISTER_ENDPOINT = "devices.register"
#: 401 errors that say an operator refused the device: counted under their own reason.
REFUSED_DEVICE = frozenset({"device_revoked", "device_rejected"})


class RateLimited(ApiError):
    """429: this client sent too much; ``Retry-After`` says when it may try again."""

    status, error = 429, "rate_limited"

    def __init__(self, detail: str, retry_after_seconds: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after_header(retry_after_seconds)


@dataclass(frozen=True)
class LimitSettings:
    """The limits, from the app's config (keys in :mod:`rollout_server.config`); 0 turns one off."""

    register_burst: int
    register_per_minute: float
    auth_failure_limit: int
    auth_failure_window_seconds: float
    max_clients: int
    trusted_proxies: int
    ipv6_prefix: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LimitSettings:
        """Raises ValueError naming the key whose value is not a number in range."""

        def number(key: str, low: float, high: float = float("inf"), integer: bool = True) -> Any:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
                    or not low <= value <= high:
                raise ValueError(f"config {key} must be {'an integer' if integer else 'a number'} in "
                                 f"[{low:g}, {high:g}], got {value!r}")
            return value

        return cls(number("REGISTER_BURST", 0), number("REGISTER_RATE_PER_MINUTE", 0, integer=False),
                   number("AUTH_FAILURE_LIMIT", 0), number("AUTH_FAILURE_WINDOW_SECONDS", 1, integer=False),
                   number("RATE_LIMIT_MAX_CLIENTS", 1), number("TRUSTED_PROXY_COUNT", 0, 16),
                   number("RATE_LIMIT_IPV6_PREFIX", 32, 128))


class KnownCredentials:
    """Digests of credentials that worked, the most recently used ``max_size`` of them."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, digest: object) -> bool:
        return digest in self._digests

    def add(self, digest: bytes) -> None:
        with self._lock:
            self._digests[digest] = None
            self._digests.move_to_end(digest)
            while len(self._digests) > self.max_size:
                self._digests.popitem(last=False)


class RateLimiter:
    """The limits of one process: who may ask now, and what a failure costs.

    Attributes:
        clock: seconds, monotonic (the app's ``CLOCK`` when a test gives one).
    """

    def __init__(self, settings: LimitSettings, counts: CounterBuffer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.counts = counts
        self.clock = clock
        self.registrations = (BucketTable(settings.register_burst, settings.register_per_minute / 60,
                                          settings.max_clients)
                              if settings.register_burst and settings.register_per_minute else None)
        self.failures = (BucketTable(settings.auth_failure_limit,
                                     settings.auth_failure_limit / settings.auth_failure_window_seconds,
                                     settings.max_clients)
                         if settings.auth_failure_limit else None)
        self.known = KnownCredentials(settings.max_clients)

    def admit(self, client: str, group: str, credential: bytes | None) -> None:
        """Raise :class:`RateLimited` if ``client`` may not send this request of ``group`` now.

        Args:
            credential: digest of the request's ``Authorization`` header (None: it has none).
        """
        now = self.clock()
        if self.failures is not None and (group == "register" or credential is not None):
            locked = self.failures.locked(client, now)
            if locked and (group == "register" or credential not in self.known):
                self._refuse(group, "auth_failures", locked,
                             f"too many failed authentications from {client}")
        if group == "register" and self.registrations is not None:
            outcome = self.registrations.take(client, now)
            if not outcome.allowed:
                if outcome.started:
                    self._episode(client, group, "registration_rate", outcome,
                                  burst=self.settings.register_burst,
                                  per_minute=self.settings.register_per_minute)
                self._refuse(group, "registration_rate", outcome.retry_after_seconds,
                             f"too many registrations from {client}")

    def failed(self, client: str, group: str, reason: str) -> None:
        """Count a 401 answered to ``client``; a guess (any but ``missing_credential``) charges it."""
        self.counts.add(f"auth_failures_{reason}")
        if reason == "missing_credential" or self.failures is None:
            return
        outcome = self.failures.charge(client, self.clock())
        if outcome.started:
            self._episode(client, group, "auth_failures", outcome, failures=self.settings.auth_failure_limit,
                          window_seconds=self.settings.auth_failure_window_seconds)

    def worked(self, credential: bytes) -> None:
        """Remember a credential that was accepted: it passes a lock of the client it comes from."""
        self.known.add(credential)

    def _refuse(self, group: str, reason: str, seconds: float, why: str) -> None:
        self.counts.add(f"rate_limited_{group}_{reason}")
        wait = retry_after_header(seconds)
        raise RateLimited(f"{why}; retry in {wait} s", seconds)

    def _episode(self, client: str, group: str, reason: str, outcome: Outcome, **limits: Any) -> None:
        """A client just became limited: log it and audit it (once per episode). The entry is
        written after the response (:func:`_account`): the request's own transaction may still
        hold SQLite's write lock (a registration that took a token's use, then failed)."""
        seconds = retry_after_header(outcome.retry_after_seconds)
        log.warning("client %s rate limited (%s, %s routes) for %d s", client, reason, group, seconds)
        self.counts.add_audit({"at": utcnow(), "actor": "system", "action": "rate_limited",
                               "target": f"client:{client}",
                               "detail": {"client": client, "reason": reason, "route_group": group,
                                          "retry_after_seconds": seconds, **limits}})


def init_app(app: Flask) -> None:
    """Install the limits: a check before every ``/v1`` request, an account of its answer after."""
    counts = CounterBuffer(lambda: session_scope(app))
    app.extensions[COUNTER_BUFFER] = counts
    wall_clock = app.config.get("CLOCK")  # a test's clock (aware datetimes), else monotonic time
    clock = (lambda: wall_clock().timestamp()) if wall_clock is not None else time.monotonic
    app.extensions[EXTENSION] = RateLimiter(LimitSettings.from_config(app.config), counts, clock)
    app.before_request(_admit)
    app.after_request(_account)


def of(app: Flask) -> RateLimiter:
    return app.extensions[EXTENSION]


def route_group(req: Request) -> str | None:
    """``register``, ``device`` or ``operator`` for a ``/v1`` or console request (its metrics
    label; a failed console sign-in counts like a bad operator token), else None (health,
    metrics and docs are never limited)."""
    if req.endpoint == REGISTER_ENDPOINT:
        return "register"
    if req.blueprint in DEVICE_BLUEPRINTS:
        return "device"
    return "operator" if req.path.startswith("/v1/") or req.blueprint == "console" else None


@functools.lru_cache(maxsize=4096)
def _client_key(remote: str, forwarded: str, trusted_proxies: int, ipv6_prefix: int) -> str:
    """The limits' key of a request from these headers (cached: parsing an address costs ~10 µs,
    and the same devices ask again and again)."""
    environ = {"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": forwarded}
    return client_network(client_address(environ, trusted_proxies), ipv6_prefix)


#: where a request's (client, route group, credential digest) waits for its answer.
_SEEN = "edgeship.rate_limit"


def _admit() -> None:
    # on every /v1 request: the objects behind Flask's proxies are looked up once
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    group = route_group(req)
    if group is None:
        return
    limiter: RateLimiter = current_app.extensions[EXTENSION]
    settings, environ = limiter.settings, req.environ
    client = _client_key(str(environ.get("REMOTE_ADDR") or ""),
                         str(environ.get("HTTP_X_FORWARDED_FOR", "")) if settings.trusted_proxies else "",
                         settings.trusted_proxies, settings.ipv6_prefix)
    header = str(environ.get("HTTP_AUTHORIZATION", "")).strip()
    credential = hashlib.blake2b(header.encode(), digest_size=16).digest() if header else None
    environ[_SEEN] = (limiter, client, group, credential)
    limiter.admit(client, group, credential)


def _account(response: Response) -> Response:
    """Charge a 401 to its client; remember a credential that got an answer (2xx or 3xx)."""
    seen = request.environ.get(_SEEN)
    if seen is None:
        return response
    limiter, client, group, credential = seen
    if response.status_code == 401:
        limiter.failed(client, group, _failure_reason(response, group, credential))
    elif 200 <= response.status_code < 400 and credential is not None and group != "register":
        limiter.worked(credential)
    if limiter.counts.has_audit():  # a lockout began: write it once this request's session is closed
        response.call_on_close(limiter.counts.flush)
    return response


def _failure_reason(response: Response, group: str, credential: bytes | None) -> str:
    """Which credential failed (a reason of ``edgeship_auth_failures_total``)."""
    if group == "register":
        return "enrollment_token"
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if error in REFUSED_DEVICE:
        return error
    if credential is None:
        return "missing_credential"
    return "device_credential" if group == "device" else "operator_token"

