"""Runtimes re-announced (protocol §3.7): a device whose runtimes changed since it registered (the
app updated its runtime) tells the server with ``PUT /v1/devices/{id}/runtimes`` before it asks
for its assignment, keeps its identity, and gets a variant for what it runs now."""

from __future__ import annotations

import json

from conformance.kit import Kit


def test_re_announces_changed_runtimes_before_its_next_poll(kit: Kit):
    device = kit.device(runtimes={"onnxruntime": "0.9.0"})  # too old for every variant (§3.4)
    status = device.check_in()
    device_id = status["device_id"]
    assert status["version"] is None, "no variant fits onnxruntime 0.9: nothing runs"
    assert _runtimes(kit, device_id) == {"onnxruntime": "0.9.0"}
    assert kit.proxy.exchanges("PUT") == [], "a device that just registered has nothing to re-announce"
    device.stop()

    device.announce(None)  # the app was updated: it now runs the runtime it ships
    device.start()
    start = len(kit.proxy.exchanges())
    status = device.check_in()
    assert (status["device_id"], status["version"]) == (device_id, "1")
    after = kit.proxy.exchanges()[start:]
    routes = [(e.method, e.route) for e in after]
    put = ("PUT", f"/v1/devices/{device_id}/runtimes")
    assert routes.count(put) == 1, f"one runtimes update, got {routes}"
    poll = ("GET", f"/v1/devices/{device_id}/assignment")
    assert routes.index(put) < routes.index(poll), "the runtimes go before the poll that depends on them"
    assert after[routes.index(put)].status == 200
    announced = _runtimes(kit, device_id)
    assert announced.get("onnxruntime") not in (None, "0.9.0"), f"what it runs now, got {announced}"
    assert len(kit.proxy.exchanges("POST", "/v1/devices/register")) == 1, "the same device, not a new one"


def _runtimes(kit: Kit, device_id: str) -> dict:
    value = kit.server.device_row(device_id)["runtimes"]
    return json.loads(value) if isinstance(value, str) else value
