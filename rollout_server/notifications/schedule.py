"""When a failed delivery is tried again: exponential backoff with jitter, a bounded number of
attempts. Pure; the dispatcher passes the clock and the random source (tests pass their own)."""

from __future__ import annotations

import random

#: attempts before a delivery is given up (default; ``WEBHOOK_MAX_ATTEMPTS``): with the default
#: base of 30 s the retries span about half an hour to an hour.
MAX_ATTEMPTS = 8
BASE_SECONDS = 30.0
#: no single wait is longer than this.
MAX_DELAY_SECONDS = 3600.0


def retry_delay_seconds(attempts: int, base_seconds: float = BASE_SECONDS,
                        rng: random.Random | None = None) -> float:
    """The wait after the ``attempts``-th failed attempt: ``base * 2**(attempts-1)``, capped, times
    a jitter in [0.5, 1] (so receivers that came back are not hit by every sender at once)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    delay = min(base_seconds * 2 ** min(attempts - 1, 30), MAX_DELAY_SECONDS)
    return delay * (rng or random).uniform(0.5, 1.0)


def gives_up(attempts: int, max_attempts: int = MAX_ATTEMPTS) -> bool:
    """Whether a delivery that failed ``attempts`` times is given up."""
    return attempts >= max_attempts
