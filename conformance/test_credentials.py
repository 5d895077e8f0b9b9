"""Credentials (protocol §2.3–2.5): a revoked device stops for good; a pending device waits with
its identity and never registers again; told to, a device rotates its credential, stores it
before using it and keeps it across a crash."""

from __future__ import annotations

from conformance.kit import Kit
from conformance.proxy import Fault

REGISTER = "/v1/devices/register"
ROTATE_HEADER = "Edgeship-Rotate-Credential"


def test_stops_on_a_revoked_credential(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    kit.server.revoke(device_id)
    assert device.check_in()["revoked"] is True
    seen = len(kit.proxy.exchanges())

    device.check_in()
    device.close_window()
    device.deliver()
    device.kill()
    assert device.start()["revoked"] is True, "revocation survives a restart"
    device.check_in()
    device.deliver()
    assert kit.proxy.exchanges()[seen:] == [], "revoked: the device sends nothing more, nor registers again"
    assert len(kit.proxy.exchanges("POST", REGISTER)) == 1


def test_waits_while_pending_without_registering_again(kit: Kit):
    token = kit.server.enroll_token("conformance-manual", admission="manual")
    device = kit.device(enroll_token=token)
    waiting = device.check_in()
    assert waiting["pending"] is True and waiting["device_id"] and waiting["version"] is None
    assert device.check_in()["pending"] is True
    device.kill()
    assert device.start()["device_id"] == waiting["device_id"]
    assert device.check_in()["pending"] is True
    assert len(kit.proxy.exchanges("POST", REGISTER)) == 1, "a pending device keeps its identity"

    kit.server.accept(waiting["device_id"])
    accepted = device.check_in()
    assert (accepted["pending"], accepted["version"]) == (False, "1")
    assert accepted["device_id"] == waiting["device_id"]


def test_rotates_its_credential_when_asked(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    route = f"/v1/devices/{device_id}/credential"
    old = kit.proxy.exchanges()[-1].credential
    assignment = f"/v1/devices/{device_id}/assignment"
    kit.proxy.arm(Fault.add_header(ROTATE_HEADER, "1", method="GET", path=assignment))
    device.check_in()
    (rotation,) = kit.proxy.exchanges("POST", route)
    assert rotation.credential == old and rotation.status == 201
    new = rotation.json()["credential"]

    device.check_in()
    after = kit.proxy.exchanges()[-1]
    assert after.credential == new, "the new credential is used from the next request on"
    device.kill()
    device.start()
    device.check_in()
    assert kit.proxy.exchanges()[-1].credential == new, "the new credential was stored durably"
    assert len(kit.proxy.exchanges("POST", REGISTER)) == 1
    assert len(kit.proxy.exchanges("POST", route)) == 1
