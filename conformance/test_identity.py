"""Registration (protocol §2): a device registers once and keeps its identity and credential
across restarts and crashes; its installed model serves at once after a restart."""

from __future__ import annotations

from conformance.kit import Kit

REGISTER = "/v1/devices/register"


def test_registers_once_and_keeps_its_identity_across_restarts(kit: Kit):
    device = kit.device()
    first = device.check_in()
    assert first["version"] == "1" and first["device_id"], first
    kit.feed(device, 2)

    device.kill()  # a crash
    restarted = device.start()
    assert restarted["device_id"] == first["device_id"]
    assert restarted["version"] == "1", "the installed model must serve at once after a restart"
    kit.feed(device, 2)  # before any check-in
    assert device.check_in()["device_id"] == first["device_id"]

    device.stop()  # a clean stop
    assert device.start()["device_id"] == first["device_id"]
    assert device.check_in()["version"] == "1"

    assert len(kit.proxy.exchanges("POST", REGISTER)) == 1
    credentials = {e.credential for e in kit.proxy.exchanges() if e.route != REGISTER}
    assert len(credentials) == 1 and None not in credentials, "every request carries the one credential"
    assert kit.server.device_row(first["device_id"]) is not None
