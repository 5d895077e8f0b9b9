"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>.<body>"``, timestamped against replays.

Pure (no Flask, no database): the dispatcher signs with it, and a receiver written in Python may
verify with it. A receiver must check the signature on the raw body, refuse timestamps more than
:data:`TOLERANCE_SECONDS` away from its clock, and drop a delivery id it has already seen.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

HEADER_EVENT = "Edgeship-Event"
HEADER_DELIVERY = "Edgeship-Delivery"
HEADER_TIMESTAMP = "Edgeship-Timestamp"
HEADER_SIGNATURE = "Edgeship-Signature"
SCHEME = "v1"
#: how far a delivery's timestamp may be from the receiver's clock (seconds, either way).
TOLERANCE_SECONDS = 300


class InvalidSignature(ValueError):
    """The delivery must be refused; the message says why (never echoing the secret)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def signed_headers(secret: str, kind: str, delivery_id: int, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt (a new timestamp, hence signature, on each retry)."""
    return {"Content-Type": "application/json", "User-Agent": "edgeship-webhooks/1",
            HEADER_EVENT: kind, HEADER_DELIVERY: str(delivery_id), HEADER_TIMESTAMP: str(timestamp),
            HEADER_SIGNATURE: signature(secret, timestamp, body)}


def verify(secret: str, headers: Mapping[str, str], body: bytes, now_seconds: float,
           tolerance_seconds: float = TOLERANCE_SECONDS) -> int:
    """Check a received delivery; returns its timestamp.

    Raises:
        InvalidSignature: a header is missing, the timestamp is too old or too far ahead, or no
            ``v1=`` signature in the header matches.
    """
    lower = {key.lower(): value for key, value in headers.items()}
    raw_timestamp = lower.get(HEADER_TIMESTAMP.lower())
    sent = lower.get(HEADER_SIGNATURE.lower())
    if not raw_timestamp or not sent:
        raise InvalidSignature(f"missing {HEADER_TIMESTAMP} or {HEADER_SIGNATURE}")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise InvalidSignature(f"{HEADER_TIMESTAMP} is not an integer") from None
    if abs(now_seconds - timestamp) > tolerance_seconds:
        raise InvalidSignature(f"timestamp {timestamp} is more than {tolerance_seconds:.0f} s from now")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, part.strip()) for part in sent.split(",")):
        raise InvalidSignature("no signature matches")
    return timestamp
