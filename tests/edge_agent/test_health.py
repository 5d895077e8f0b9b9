"""The device's thermal state: read where the OS tells it, absent (not zero) where it does not."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent import health


def zone(root: Path, index: int, kind: str, millidegrees: str) -> None:
    directory = root / f"thermal_zone{index}"
    directory.mkdir(parents=True)
    (directory / "type").write_text(kind + "\n")
    (directory / "temp").write_text(millidegrees + "\n")


def test_the_cpu_zone_is_preferred_over_zone_zero(tmp_path):
    zone(tmp_path, 0, "acpitz", "27800")
    zone(tmp_path, 1, "x86_pkg_temp", "61250")
    assert health.cpu_temperature(tmp_path) == pytest.approx(61.25, abs=0.06)


def test_zone_zero_without_a_cpu_zone_and_nothing_without_zones(tmp_path):
    assert health.cpu_temperature(tmp_path) is None
    zone(tmp_path, 0, "soc-whatever", "48000")
    assert health.cpu_temperature(tmp_path) == 48.0


@pytest.mark.parametrize("reading", ["garbage", "-", "999999"])
def test_an_unreadable_or_impossible_temperature_is_absent(tmp_path, reading):
    zone(tmp_path, 0, "cpu-thermal", reading)
    assert health.cpu_temperature(tmp_path) is None


def fake_vcgencmd(tmp_path: Path, answer: str) -> str:
    script = tmp_path / "vcgencmd"
    script.write_text(f"#!/bin/sh\necho '{answer}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize(("answer", "expected"), [
    ("throttled=0x0", False),
    ("throttled=0x50000", False),  # throttled and capped since boot, not now
    ("throttled=0x50005", True),  # under-voltage and throttled now
    ("throttled=0x2", True),  # ARM frequency capped now
    ("throttled=0x8", True),  # soft temperature limit now
    ("error=1 error_msg=\"Command not registered\"", None),
    ("throttled=zz", None),
])
def test_the_firmware_throttled_bits_that_mean_now(tmp_path, answer, expected):
    assert health.throttled(fake_vcgencmd(tmp_path, answer)) is expected


def test_no_vcgencmd_means_no_throttled_field(monkeypatch, tmp_path):
    monkeypatch.setattr(health.shutil, "which", lambda _: None)
    monkeypatch.setattr(health, "THERMAL", tmp_path)
    assert health.throttled() is None
    assert "throttled" not in health.read_health()
