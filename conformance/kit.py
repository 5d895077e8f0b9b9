"""What a scenario works with (:class:`Kit`): the server, its own proxy, fresh devices, the
releases and real inputs to feed them. The ``kit`` fixture (``conftest.py``) makes one per
scenario."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance.driver import Device, Implementation
from conformance.proxy import FaultProxy
from conformance.releases import Releases
from conformance.server import MODEL, KitServer


class Kit:
    """What a scenario works with: the server, this scenario's proxy, devices, the releases."""

    def __init__(self, implementation: Implementation, server: KitServer, proxy: FaultProxy,
                 releases: Releases, tmp_path: Path, devices: list[Device]) -> None:
        self.implementation = implementation
        self.server = server
        self.proxy = proxy
        self.releases = releases
        self.tmp_path = tmp_path
        self.devices = devices
        self.images, self.labels = releases.inputs()

    def device(self, enroll_token: str | None = None, trusted_keys: list[Path] | None = None,
               check_interval_seconds: float | None = None, start: bool = True,
               runtimes: dict[str, str] | None = None) -> Device:
        """A new device (own state directory) talking to the server through this scenario's proxy."""
        index = len(self.devices)
        token_file = self.tmp_path / f"enroll-token-{index}"
        token_file.write_text((enroll_token or self.server.enroll) + "\n")
        token_file.chmod(0o600)
        device = Device(self.implementation, self.tmp_path / f"device-{index}", self.proxy.url, MODEL,
                        trusted_keys or [self.releases.public_key], token_file,
                        self.tmp_path / f"device-{index}.log", check_interval_seconds, runtimes=runtimes)
        self.devices.append(device)
        if start:
            device.start()
        return device

    def feed(self, device: Device, count: int, first: int = 0) -> int:
        """Predict ``count`` labelled digits; each must be answered. Returns the correct answers."""
        correct = 0
        for i in range(first, first + count):
            row = i % len(self.images)
            answer = device.predict({"image": self.images[row:row + 1]}, label=int(self.labels[row]))
            assert "outputs" in answer, f"predict #{i} was not answered: {answer}"
            (scores,) = answer["outputs"].values()
            correct += int(np.argmax(scores) == self.labels[row])
        return correct

    def wait_status(self, device: Device, what: str, timeout: float = 60.0,
                    **expected: Any) -> dict[str, Any]:
        """Poll the device's status until it has ``expected`` (devices running their own loop)."""
        deadline = time.monotonic() + timeout
        while True:
            status = device.status()
            if all(status.get(k) == v for k, v in expected.items()):
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: status {status}")
            time.sleep(0.1)

    def artifact_route(self, version: str) -> str:
        return f"/v1/artifacts/{self.releases.variant(version)['sha256']}"

    def reports(self, device_id: str) -> list[dict[str, Any]]:
        return self.server.device_reports(device_id)
