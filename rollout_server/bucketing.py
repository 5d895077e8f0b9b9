"""Deterministic sticky bucketing of devices into canary and stable.

``bucket = first 8 bytes of sha256(salt ‖ device_id), big-endian, mod 10000``. A device is
canary while ``bucket < percent × 100``: raising the percentage only adds devices, and a
device keeps its bucket for the life of the rollout (the salt is the rollout's).

Stratified per device class (``stratify=True``): the class joins the hashed text, so each
class is bucketed independently and every class with enough devices gets close to its own
share (an unstratified 10% can leave a small class with no canary at all by chance; this
makes the share per class a property tested per class, not only overall).
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(salt: str, device_id: str, device_class: str | None = None) -> int:
    """The device's bucket in ``[0, 10000)`` for a rollout salt (and class when stratified)."""
    text = f"{salt}\x1f{device_class}\x1f{device_id}" if device_class else f"{salt}{device_id}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_canary(bucket_value: int, percent: float) -> bool:
    """True while ``bucket < percent × 100``; ``percent`` in [0, 100]."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must be in [0, 100], got {percent!r}")
    return bucket_value < round(percent * 100)


def assign_cohort(salt: str, device_id: str, percent: float, device_class: str | None = None) -> str:
    """``canary`` or ``stable`` for this device in a rollout at ``percent``."""
    return "canary" if in_canary(bucket(salt, device_id, device_class), percent) else "stable"
