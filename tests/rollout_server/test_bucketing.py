from __future__ import annotations

import hashlib

import pytest

from rollout_server.bucketing import assign_cohort, bucket, in_canary


def test_bucket_is_the_documented_hash():
    digest = hashlib.sha256(b"salt-1device-42").digest()
    assert bucket("salt-1", "device-42") == int.from_bytes(digest[:8], "big") % 10_000


def test_ten_percent_of_ten_thousand_devices_lands_within_nine_to_eleven():
    devices = [f"dev-{i}" for i in range(10_000)]
    canary = [d for d in devices if assign_cohort("rollout-7", d, 10) == "canary"]
    assert 900 <= len(canary) <= 1100


def test_cohorts_are_sticky_across_the_ramp():
    devices = [f"dev-{i}" for i in range(10_000)]
    previous: set[str] = set()
    for percent in (10, 50, 100):
        canary = {d for d in devices if assign_cohort("rollout-7", d, percent) == "canary"}
        assert previous <= canary  # raising the share never moves a device out
        previous = canary
    assert len(previous) == 10_000


def test_stratified_bucketing_gives_each_class_its_share():
    for device_class in ("rpi4", "rpi5", "android", "ios"):
        devices = [f"{device_class}-{i}" for i in range(2_000)]
        share = sum(assign_cohort("r", d, 10, device_class) == "canary" for d in devices) / 2_000
        assert 0.08 <= share <= 0.12


def test_percent_is_checked():
    assert in_canary(999, 10) and not in_canary(1000, 10)
    with pytest.raises(ValueError):
        in_canary(1, 101)
