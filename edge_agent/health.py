"""The device's thermal state, read once per report window where the OS exposes it.

* ``cpu_temp_celsius``: the CPU's thermal zone (``/sys/class/thermal``; the zone typed
  ``cpu-thermal``/``cpu_thermal``/``x86_pkg_temp``/``soc_thermal`` if one is, else zone 0).
* ``throttled``: Raspberry Pi firmware's ``vcgencmd get_throttled``: true when the ARM
  frequency is capped, the CPU is throttled or the soft temperature limit is active *now*
  (bits 1, 2, 3; bit 0, under-voltage, is reported as throttled too, since it caps the clock).

A field the device cannot tell is left out of the report, never sent as 0 or false: a missing
reading is not a cool, unthrottled CPU. Only the standard library and the contract: this runs on the device.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgeship.contract.reports import TEMPERATURE_RANGE

THERMAL = Path("/sys/class/thermal")
#: thermal zone types that are the CPU (first match wins), by platform.
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "cpu0-thermal")
#: ``get_throttled`` bits that mean the CPU runs below its clock now.
THROTTLED_NOW = 0x1 | 0x2 | 0x4 | 0x8


def cpu_temperature(root: Path | None = None) -> float | None:
    """The CPU temperature in °C, or None when no thermal zone says (under ``root``, by default
    :data:`THERMAL`)."""
    root = THERMAL if root is None else root
    zones = sorted(root.glob("thermal_zone*"), key=lambda p: int(p.name.removeprefix("thermal_zone") or 0))
    typed = {}
    for zone in zones:
        try:
            typed[zone] = (zone / "type").read_text().strip()
        except OSError:
            continue
    preferred = [z for kind in CPU_ZONE_TYPES for z, t in typed.items() if t == kind]
    for zone in preferred or zones[:1]:
        try:
            celsius = int((zone / "temp").read_text().strip()) / 1000.0  # millidegrees
        except (OSError, ValueError):
            continue
        if TEMPERATURE_RANGE[0] <= celsius <= TEMPERATURE_RANGE[1]:
            return round(celsius, 1)
    return None


def throttled(command: str | None = None, timeout: float = 2.0) -> bool | None:
    """Whether the Raspberry Pi firmware says the CPU is throttled now; None without ``vcgencmd``
    or when it does not answer ``throttled=0x...``."""
    command = command or shutil.which("vcgencmd")
    if command is None:
        return None
    try:
        answer = subprocess.run([command, "get_throttled"], capture_output=True, text=True,
                                timeout=timeout, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not answer.startswith("throttled="):
        return None
    try:
        return bool(int(answer.removeprefix("throttled="), 16) & THROTTLED_NOW)
    except ValueError:
        return None


def read_health(thermal_dir: Path | None = None, vcgencmd: str | None = None) -> dict[str, Any]:
    """The report fields this device can tell now (none, one or both); ``thermal_dir`` and
    ``vcgencmd`` replace the system's (``AgentConfig``)."""
    fields: dict[str, Any] = {}
    temperature = cpu_temperature(thermal_dir)
    if temperature is not None:
        fields["cpu_temp_celsius"] = temperature
    state = throttled(vcgencmd)
    if state is not None:
        fields["throttled"] = state
    return fields
