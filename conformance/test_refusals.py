"""Refusals (protocol §4.4, §5.3, §6, §7.4): a release that is not signed by a pinned key, an
artifact that is not the signed one, or a model that fails its golden probe never runs; the
device keeps serving what it ran and reports the refusal once, under the assigned release, with
no inference."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.kit import Kit
from conformance.proxy import Fault


def refusals(rows: list[dict], version: str) -> list[tuple[int, int, int]]:
    """(load_failed, golden_mismatch, inferences) of each report about ``version``."""
    return [(r["err_load_failed"], r["err_golden_mismatch"], r["inferences"])
            for r in rows if r["version"] == version]


def deliver_all(device) -> None:
    device.close_window()
    assert device.deliver(), "the server is up: every report must be delivered"


def test_refuses_a_manifest_signed_by_an_untrusted_key(kit: Kit, untrusted_key: Path):
    device = kit.device(trusted_keys=[untrusted_key])
    status = device.check_in()
    assert status["version"] is None, "a release signed by a key the device does not pin must not run"
    assert device.predict({"image": kit.images[:1]}).get("error") == "no_model"
    assert kit.proxy.exchanges(prefix="/v1/artifacts/") == [], "refused before downloading anything"
    deliver_all(device)
    assert refusals(kit.reports(status["device_id"]), "1") == [(1, 0, 0)]


FAULTS = {
    "tampered": Fault.tamper,       # one byte flipped, same size
    "too_long": Fault.pad,          # 16 bytes more than signed, announced in Content-Length
    "too_short": Fault.truncate,    # a complete answer 16 bytes short of the signed size
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_refuses_an_artifact_that_is_not_the_signed_one(kit: Kit, fault: str):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    kit.proxy.arm(FAULTS[fault](kit.artifact_route("2")))
    kit.server.set_stable("2")
    assert device.check_in()["version"] == "1", f"a {fault} artifact must not run"
    kit.feed(device, 3)  # the old model keeps serving
    deliver_all(device)
    rows = kit.reports(device_id)
    assert refusals(rows, "2") == [(1, 0, 0)]
    assert sum(r["inferences"] for r in rows if r["version"] == "1") == 3


def test_refuses_a_golden_mismatch_and_keeps_serving_the_old_model(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    kit.server.set_stable("3")  # re-signed, verifies, but its golden outputs disagree with its model
    assert device.check_in()["version"] == "1"
    kit.feed(device, 3)
    deliver_all(device)
    rows = kit.reports(device_id)
    assert refusals(rows, "3") == [(0, 1, 0)]
    assert sum(r["inferences"] for r in rows if r["version"] == "1") == 3
