"""Token buckets by key (a client's network), bounded in number: the arithmetic of the rate limits.

A bucket holds up to ``capacity`` tokens and refills at ``refill_per_second``. Two uses:

* :meth:`BucketTable.take` spends a token per request (registrations) and says how long to wait
  when there is none;
* :meth:`BucketTable.charge` spends one per failure (failed authentications); the failure that
  empties the bucket locks the key until the bucket is full again (``capacity / refill`` seconds
  at most), which :meth:`BucketTable.locked` reports. Hence "``capacity`` failures within that
  window lock the key for the window".

Each time a key starts being limited is reported once (``started``) until its bucket is full again,
so a caller can log and audit an episode instead of every refused request. A full bucket is the
same as none, so the table keeps at most ``max_keys`` keys and forgets the least recently used:
a flood from many addresses costs a bounded amount of memory. No I/O and no clock of its own:
every call takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """What a bucket said about one request or failure.

    Attributes:
        allowed: False when the request must be refused now.
        retry_after_seconds: when refused, how long until it would be allowed (else 0).
        started: this call began a limited episode of the key (log and audit it once).
    """

    allowed: bool
    retry_after_seconds: float = 0.0
    started: bool = False


ALLOWED = Outcome(True)


class _Bucket:
    __slots__ = ("limited", "locked_until", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.limited = False  # in an episode that began with the bucket empty
        self.locked_until = -math.inf


class BucketTable:
    """Token buckets by key, at most ``max_keys`` of them (thread-safe).

    Example:
        >>> failures = BucketTable(capacity=3, refill_per_second=3 / 60, max_keys=1000)
        >>> [failures.charge("198.51.100.7", now=0.0).started for _ in range(3)]
        [False, False, True]
        >>> failures.locked("198.51.100.7", now=1.0)   # seconds until the bucket is full again
        59.0
    """

    def __init__(self, capacity: float, refill_per_second: float, max_keys: int) -> None:
        if capacity < 1 or refill_per_second <= 0 or max_keys < 1:
            raise ValueError(f"a bucket needs capacity >= 1, a refill rate > 0 and room for a key; got "
                             f"capacity={capacity!r}, refill_per_second={refill_per_second!r}, "
                             f"max_keys={max_keys!r}")
        self.capacity = float(capacity)
        self.refill_per_second = float(refill_per_second)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> Outcome:
        """Spend a token for a request of ``key``; refused (with the wait for one token) if empty."""
        with self._lock:
            bucket = self._bucket(key, now)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return ALLOWED
            started = not bucket.limited
            bucket.limited = True
            return Outcome(False, (1 - bucket.tokens) / self.refill_per_second, started)

    def charge(self, key: str, now: float) -> Outcome:
        """Spend a token for a failure of ``key``; the one that empties the bucket locks the key
        until it is full again (``started``; the outcome is refused from then on)."""
        with self._lock:
            bucket = self._bucket(key, now)
            if bucket.locked_until > now:
                return Outcome(False, bucket.locked_until - now)
            bucket.tokens = max(0.0, bucket.tokens - 1)
            if bucket.tokens >= 1:
                return ALLOWED
            bucket.limited = True
            bucket.locked_until = now + (self.capacity - bucket.tokens) / self.refill_per_second
            return Outcome(False, bucket.locked_until - now, started=True)

    def locked(self, key: str, now: float) -> float:
        """Seconds until ``key``'s lock ends (0: not locked). Creates no bucket."""
        with self._lock:
            bucket = self._buckets.get(key)
            return max(0.0, bucket.locked_until - now) if bucket is not None else 0.0

    def _bucket(self, key: str, now: float) -> _Bucket:
        """``key``'s bucket refilled up to ``now`` (a new, full one if unknown), as the most
        recently used; the least recently used key is forgotten past ``max_keys``."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return bucket
        self._buckets.move_to_end(key)
        elapsed = max(0.0, now - bucket.stamp)  # a clock that stepped back refills nothing
        bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.refill_per_second)
        bucket.stamp = max(bucket.stamp, now)
        if bucket.tokens >= self.capacity and bucket.locked_until <= now:
            bucket.limited = False  # the episode is over: the next one is reported again
        return bucket


def retry_after_header(seconds: float) -> int:
    """``Retry-After`` in whole seconds, at least 1 (a client told 0 would retry at once)."""
    return max(1, math.ceil(seconds - 1e-9))
