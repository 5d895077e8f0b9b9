"""Backoff (protocol §2.5, §9.3): a device running its own loop never asks again before the
``Retry-After`` of a 429, a 503 or a pending answer (403 ``device_pending``), and keeps serving."""

from __future__ import annotations

import pytest

from conformance.kit import Kit
from conformance.proxy import Exchange, Fault
from conformance.server import PENDING_RETRY_SECONDS

RETRY_AFTER_SECONDS = 2
CHECK_INTERVAL_SECONDS = 0.2  # the device would ask every 0.2 s, and back off 0.5–1 s on its own


def gap_to_next_request(kit: Kit, answer: Exchange) -> float:
    """Seconds from the answer's last byte to the device's next request (of any kind)."""
    def after(exchanges: list[Exchange]) -> Exchange | None:
        later = exchanges[exchanges.index(answer) + 1:]
        return later[0] if later else None

    following = kit.proxy.wait_for(after, 30, "the device's next request")
    assert answer.answered is not None
    return following.started - answer.answered


@pytest.mark.parametrize("status", [429, 503])
def test_honours_retry_after(kit: Kit, status: int):
    device = kit.device(check_interval_seconds=CHECK_INTERVAL_SECONDS)
    kit.wait_status(device, "v1 installed", version="1")
    fault = kit.proxy.arm(Fault.reply(status, retry_after=str(RETRY_AFTER_SECONDS), method="GET",
                                      prefix="/v1/devices/"))
    assert fault.served.wait(30), "the device stopped polling"
    (answer,) = [e for e in kit.proxy.exchanges() if e.fault == "reply"]
    kit.feed(device, 2)  # it keeps serving meanwhile
    assert gap_to_next_request(kit, answer) >= RETRY_AFTER_SECONDS - 0.05


def test_honours_retry_after_while_pending(kit: Kit):
    token = kit.server.enroll_token("conformance-manual-loop", admission="manual")
    device = kit.device(enroll_token=token, check_interval_seconds=CHECK_INTERVAL_SECONDS)

    def two_pending_answers(exchanges: list[Exchange]) -> list[Exchange] | None:
        pending = [e for e in exchanges if e.status == 403 and e.answered is not None]
        return pending[:2] if len(pending) >= 2 else None

    first, _ = kit.proxy.wait_for(two_pending_answers, 30, "two pending answers")
    assert gap_to_next_request(kit, first) >= PENDING_RETRY_SECONDS - 0.05
    assert len(kit.proxy.exchanges("POST", "/v1/devices/register")) == 1
    assert device.status()["pending"] is True
