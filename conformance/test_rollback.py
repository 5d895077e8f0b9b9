"""Rollback (protocol §7.2): a canary device returns to the stable release at its first check-in
after the rollout is rolled back, from the files it kept (no download), and reports as stable."""

from __future__ import annotations

from conformance.kit import Kit


def test_returns_to_stable_within_one_check_in_after_a_rollback(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    for _ in range(3):  # 99.99% of devices are canaries: a new rollout (new salt) for the rare other one
        rollout_id = kit.server.start_rollout("2")
        canary = device.check_in()
        if canary["cohort"] == "canary":
            break
        kit.server.abort_rollout(rollout_id)
    assert (canary["version"], canary["cohort"], canary["rollout_id"]) == ("2", "canary", rollout_id)
    kit.feed(device, 2)
    device.close_window()
    downloads = len(kit.proxy.exchanges(prefix="/v1/artifacts/"))

    kit.server.abort_rollout(rollout_id)
    back = device.check_in()  # one check-in
    assert (back["version"], back["cohort"], back["rollout_id"]) == ("1", "stable", None)
    assert len(kit.proxy.exchanges(prefix="/v1/artifacts/")) == downloads, "v1 was kept: nothing to download"
    kit.feed(device, 3)
    device.close_window()
    assert device.deliver()

    rows = kit.reports(device_id)
    assert sum(r["inferences"] for r in rows if r["version"] == "2" and r["cohort"] == "canary") == 2
    assert sum(r["inferences"] for r in rows if r["version"] == "1" and r["cohort"] == "stable") == 3
