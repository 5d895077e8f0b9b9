"""Who is in the simulated fleet: device classes, their hardware and runtimes.

Usage::

    classes = parse_classes("rpi4:0.5,rpi5:0.3,android:0.2")
    runtimes = parse_runtimes(["android=litert:2.3.0", "onnxruntime:1.20.1,litert:2.3.0"])
    specs = plan_fleet(2000, classes, runtimes, seed=0)    # exactly 1000 rpi4, 600 rpi5, 400 android
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from rollout_server.simulator.errors import SettingsError
from rollout_server.validation import DEVICE_CLASS

ONNX_LITERT = {"onnxruntime": "1.20.1", "litert": "2.3.0"}
DEFAULT_CLASSES: dict[str, float] = {"rpi4": 0.5, "rpi5": 0.3, "android": 0.2}
#: all classes, for ``--runtimes name:version,...`` without a ``CLASS=``.
ALL_CLASSES = "*"


@dataclass(frozen=True)
class DeviceSpec:
    """What a simulated device says about itself when it registers.

    Attributes:
        device_class: coarse class (``rpi4``, ``android``, ...).
        arch: CPU architecture.
        os: operating system.
        ram_bytes: memory (the server picks variants that fit in half of it).
        runtimes: runtime name → version.
    """

    device_class: str
    arch: str
    os: str
    ram_bytes: int
    runtimes: Mapping[str, str] = field(default_factory=dict)

    def registration(self, enrollment_token: str) -> dict[str, object]:
        """The body of ``POST /v1/devices/register``."""
        return {"enrollment_token": enrollment_token, "device_class": self.device_class, "arch": self.arch,
                "os": self.os, "ram_bytes": self.ram_bytes, "runtimes": dict(self.runtimes)}


#: known classes; any other class name gets the ``generic`` hardware under its own name.
KNOWN_CLASSES: dict[str, DeviceSpec] = {
    "rpi4": DeviceSpec("rpi4", "aarch64", "Raspberry Pi OS 12", 4 * 2**30, ONNX_LITERT),
    "rpi5": DeviceSpec("rpi5", "aarch64", "Raspberry Pi OS 12", 8 * 2**30, ONNX_LITERT),
    "android": DeviceSpec("android", "aarch64", "Android 14", 6 * 2**30, {"litert": "2.3.0"}),
    "ios": DeviceSpec("ios", "arm64", "iOS 18", 6 * 2**30, {"coreml": "8.0"}),
    "linux-x86_64": DeviceSpec("linux-x86_64", "x86_64", "Debian 12", 16 * 2**30, ONNX_LITERT),
}
GENERIC = DeviceSpec("generic", "aarch64", "Linux", 4 * 2**30, ONNX_LITERT)


def parse_classes(spec: str) -> dict[str, float]:
    """``class:share,...`` → shares summing to 1 (shares are relative: ``a:1,b:3`` is 25/75).

    Raises:
        SettingsError: a bad class name, a share that is not a positive number, or a repeat.
    """
    shares: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, raw = item.partition(":")
        name = name.strip()
        if not DEVICE_CLASS.match(name):
            raise SettingsError(f"--classes {spec!r}: {name!r} is not a device class name ([a-z0-9_-]+)")
        try:
            share = float(raw) if sep else 1.0
        except ValueError:
            raise SettingsError(f"--classes {spec!r}: share of {name} is not a number: {raw!r}") from None
        if not share > 0 or share == float("inf"):
            raise SettingsError(f"--classes {spec!r}: share of {name} must be positive, got {raw!r}")
        if name in shares:
            raise SettingsError(f"--classes {spec!r}: {name} given twice")
        shares[name] = share
    if not shares:
        raise SettingsError(f"--classes {spec!r}: no class given")
    total = sum(shares.values())
    return {name: share / total for name, share in shares.items()}


def parse_runtimes(specs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``[CLASS=]name:version,...`` items → runtimes per class (``*`` for every class).

    A later item for the same class replaces the earlier one. Example: ``["android=litert:2.3.0",
    "onnxruntime:1.20.1,litert:2.3.0"]``.

    Raises:
        SettingsError: naming the malformed item.
    """
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        scope, eq, rest = spec.partition("=")
        device_class = scope.strip() if eq else ALL_CLASSES
        if eq and not DEVICE_CLASS.match(device_class):
            raise SettingsError(f"--runtimes {spec!r}: {device_class!r} is not a device class name")
        runtimes: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in (rest if eq else spec).split(","))):
            name, sep, version = item.partition(":")
            if not sep or not name.strip() or not version.strip():
                raise SettingsError(f"--runtimes {spec!r}: {item!r} is not name:version")
            runtimes[name.strip()] = version.strip()
        if not runtimes:
            raise SettingsError(f"--runtimes {spec!r}: no runtime given")
        out[device_class] = runtimes
    return out


def class_spec(device_class: str, runtimes: Mapping[str, Mapping[str, str]]) -> DeviceSpec:
    """The hardware of ``device_class``, with its runtimes overridden by ``runtimes`` if given."""
    base = KNOWN_CLASSES.get(device_class, replace(GENERIC, device_class=device_class))
    chosen = runtimes.get(device_class, runtimes.get(ALL_CLASSES, base.runtimes))
    return replace(base, runtimes=dict(chosen))


def plan_fleet(devices: int, classes: Mapping[str, float],
               runtimes: Mapping[str, Mapping[str, str]] | None = None, seed: int = 0) -> list[DeviceSpec]:
    """``devices`` specs with class counts as close to the shares as integers allow (largest
    remainder; shares are relative), in a shuffled order so every worker gets a mix.

    Raises:
        SettingsError: a share is not positive.
    """
    if not classes or not all(share > 0 for share in classes.values()):
        raise SettingsError(f"device class shares must be positive, got {dict(classes)}")
    specs = {name: class_spec(name, runtimes or {}) for name in classes}
    total = sum(classes.values())
    exact = {name: devices * share / total for name, share in classes.items()}
    counts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(classes, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: devices - sum(counts.values())]:
        counts[name] += 1
    fleet = [specs[name] for name in classes for _ in range(counts[name])]
    random.Random(seed).shuffle(fleet)
    return fleet
