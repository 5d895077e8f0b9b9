"""What this device is: class, architecture, OS, RAM and the model runtimes installed on it.

Installed is not loadable: :mod:`edge_agent.runtime_probe` keeps only the runtimes that load a
model here, and the agent announces those.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

#: runtime name the server knows → distributions that provide it, in the agent's preference.
RUNTIME_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    # onnxruntime behind edgeship's unpacking of 2-bit ternary weights (edgeship/runtimes/packed.py)
    "onnxruntime-packed": ("onnxruntime", "onnxruntime-gpu"),
    "litert": ("ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu"),
    "coreml": ("coremltools",),
    "mnn": ("mnn",),
    "openvino": ("openvino",),
}


def installed_runtimes() -> dict[str, str]:
    """``{runtime: version}`` for every runtime whose package is installed (CoreML only on macOS).

    Versions come from package metadata, so nothing heavy is imported to find them.
    """
    found: dict[str, str] = {}
    for runtime, distributions in RUNTIME_DISTRIBUTIONS.items():
        if runtime == "coreml" and platform.system() != "Darwin":
            continue
        for distribution in distributions:
            try:
                found[runtime] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def distribution_versions() -> dict[str, str]:
    """``{distribution: version}`` of every runtime package installed, whether preferred or not:
    a change in any of them may change which runtimes load."""
    found: dict[str, str] = {}
    for distributions in RUNTIME_DISTRIBUTIONS.values():
        for distribution in distributions:
            try:
                found[distribution] = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue
    return found


def ram_bytes() -> int:
    """Physical memory of this host (0 when it cannot be told)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def guess_device_class() -> str:
    """A coarse class from the hardware: ``rpi4``, ``rpi5``, ``linux-aarch64``, ``macos-arm64``..."""
    model = ""
    try:
        with open("/proc/device-tree/model", "rb") as handle:
            model = handle.read().decode(errors="replace").lower()
    except OSError:
        pass
    for number in ("5", "4", "3"):
        if f"raspberry pi {number}" in model:
            return f"rpi{number}"
    system = {"Darwin": "macos"}.get(platform.system(), platform.system().lower())
    return f"{system}-{platform.machine().lower()}"


def describe(device_class: str | None = None, ram: int | None = None,
             runtimes: dict[str, str] | None = None, attributes: dict[str, str] | None = None) -> dict:
    """The registration body's device fields; arguments override what is detected.
    ``attributes`` (the operator's, for canary targeting: ``app_version``, ``region``...) are
    sent only when there are some."""
    return {
        "device_class": device_class or guess_device_class(),
        "arch": platform.machine() or "unknown",
        "os": f"{platform.system()} {platform.release()}"[:64],
        "ram_bytes": ram if ram is not None else ram_bytes(),
        "runtimes": runtimes if runtimes is not None else installed_runtimes(),
        **({"attributes": dict(attributes)} if attributes else {}),
    }
