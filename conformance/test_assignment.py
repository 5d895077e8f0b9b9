"""Assignment polling (protocol §3.2): the device sends the ETag it holds, takes 304 as
"unchanged", and follows a changed assignment. (§3.2 says SHOULD for ``If-None-Match``; the
kit requires it: a fleet polling every few seconds without it costs the server full answers.)"""

from __future__ import annotations

from conformance.kit import Kit
from conformance.proxy import Exchange


def tag(value: str | None) -> str | None:
    """An entity tag without its quotes (the server takes ``"x"`` and ``x`` alike)."""
    return value.strip().strip('"') if value else None


def sent_tag(exchange: Exchange) -> str | None:
    return tag(exchange.request_headers.get("if-none-match"))


def test_follows_assignment_changes_with_etag(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    route = f"/v1/devices/{device_id}/assignment"
    device.check_in()
    first, second = kit.proxy.exchanges("GET", route)
    etag = tag(first.response_headers.get("etag"))
    assert first.status == 200 and etag
    assert sent_tag(second) == etag and second.status == 304

    kit.server.set_stable("2")
    assert device.check_in()["version"] == "2"
    changed = kit.proxy.exchanges("GET", route)[-1]
    assert sent_tag(changed) == etag
    assert changed.status == 200 and tag(changed.response_headers["etag"]) != etag

    assert device.check_in()["version"] == "2"
    last = kit.proxy.exchanges("GET", route)[-1]
    assert sent_tag(last) == tag(changed.response_headers["etag"]) and last.status == 304
