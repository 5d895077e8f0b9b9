"""Exponential backoff with jitter, for the server being away and for variants that failed."""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable

#: the longest ``Retry-After`` honoured (a day): a larger one is read as this.
MAX_RETRY_AFTER_SECONDS = 86400.0


class Backoff:
    """Delays that double on each failure up to a cap, with "equal jitter" (half fixed, half
    random) so a fleet that lost its server does not come back in lockstep.

    Example:
        >>> backoff = Backoff(1.0, 300.0)
        >>> delay = backoff.failure()     # 0.5..1 s, then 1..2 s, 2..4 s ... up to 150..300 s
        >>> backoff.success()             # back to the start
    """

    def __init__(self, initial_seconds: float, max_seconds: float,
                 rng: Callable[[], float] = random.random) -> None:
        self.initial_seconds = initial_seconds
        self.max_seconds = max_seconds
        self.failures = 0
        self._rng = rng

    def failure(self, at_least: float | None = None) -> float:
        """Record a failure; return how long to wait before the next try.

        Args:
            at_least: the server's ``Retry-After`` in seconds (:func:`retry_after_seconds`), if it
                sent one: the wait is never shorter, and is spread over ``[at_least, 1.5 ×
                at_least]`` so a fleet told the same (devices behind one NAT) does not return at once.
        """
        ceiling = min(self.max_seconds, self.initial_seconds * 2.0 ** self.failures)
        self.failures += 1
        delay = ceiling / 2 + self._rng() * ceiling / 2
        if at_least:
            delay = max(delay, at_least * (1 + self._rng() / 2))
        return delay

    def success(self) -> None:
        self.failures = 0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date), at most :data:`MAX_RETRY_AFTER_SECONDS`; None when absent or unreadable.

    Example:
        >>> retry_after_seconds("120")
        120.0
    """
    text = (value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, wait), MAX_RETRY_AFTER_SECONDS) if math.isfinite(wait) else None


class VariantBackoff:
    """Variants that failed to load or their golden check, and until when they are not tried
    again; the wait doubles with each new failure of the same variant.

    Keys name a variant *of a release* (``version:sha256``): the golden check belongs to the
    release, so the same file in another release (same sha256) deserves its own try.
    """

    def __init__(self, initial_seconds: float, max_seconds: float | None = None) -> None:
        self.initial_seconds = initial_seconds
        self.max_seconds = max_seconds if max_seconds is not None else initial_seconds * 16
        self._until: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def failed(self, key: str, now: float) -> float:
        """Record a failure at ``now``; return when the variant may be tried again."""
        count = self._failures.get(key, 0)
        self._failures[key] = count + 1
        self._until[key] = now + min(self.max_seconds, self.initial_seconds * 2.0 ** count)
        return self._until[key]

    def blocked(self, key: str, now: float) -> bool:
        return self._until.get(key, float("-inf")) > now
