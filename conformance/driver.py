"""The kit's side of the driver protocol (docs/conformance.md): one device per driver process.

    device = Device(implementation, state_dir, server=proxy.url, ...)
    device.start()                       # waits for the driver's "ready" line
    device.check_in()["version"]         # every command answers with JSON
    device.kill(); device.start()        # a crash (SIGKILL) and a restart on the same state

An implementation is a command line plus a one-time build (:class:`Implementation`); the kit
ships the Python reference agent's and the TypeScript SDK's (:mod:`conformance.implementations`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.conformance_driver import decode_array, encode_array

READY_TIMEOUT_SECONDS = 60.0
COMMAND_TIMEOUT_SECONDS = 60.0


class DriverError(RuntimeError):
    """The driver exited, did not answer in time, or answered ``driver_error``."""


@dataclass(frozen=True)
class Implementation:
    """A device implementation under test: how to start its driver."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class Device:
    """One device: a driver process on ``state_dir``, restartable on the same state.

    Args:
        implementation: whose driver to run.
        state_dir: the device's own directory (kept across restarts).
        server: the URL the device talks to (the kit's proxy in front of the server).
        model: the model name.
        trusted_keys: PEM files of the publisher keys the device pins.
        enroll_token_file: file holding the enrollment token.
        log_path: where the driver's stderr goes (shown when a scenario fails).
        check_interval_seconds: run the device's own loop at this interval; None: commands only.
        runtimes: the runtimes it announces (``--runtimes``); None: what the implementation has.
    """

    def __init__(self, implementation: Implementation, state_dir: Path, server: str, model: str,
                 trusted_keys: Sequence[Path], enroll_token_file: Path, log_path: Path,
                 check_interval_seconds: float | None = None, device_class: str | None = None,
                 runtimes: dict[str, str] | None = None) -> None:
        self.implementation = implementation
        self.state_dir = state_dir
        self.log_path = log_path
        args = ["--server", server, "--model", model, "--state-dir", str(state_dir),
                "--enroll-token-file", str(enroll_token_file)]
        for key in trusted_keys:
            args += ["--trusted-key", str(key)]
        if check_interval_seconds is not None:
            args += ["--check-interval-seconds", f"{check_interval_seconds:g}"]
        if device_class is not None:
            args += ["--device-class", device_class]
        self.args = args
        self.announce(runtimes)
        self.process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start the driver; its status once it is ready (restored, before any check-in)."""
        if self.process is not None and self.process.poll() is None:
            raise DriverError("the device is already running")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.implementation.command, *self.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True, bufsize=1, cwd=self.implementation.cwd,
                env={**os.environ, **self.implementation.env})
        self._lines = queue.Queue()
        threading.Thread(target=_read_lines, args=(self.process.stdout, self._lines), daemon=True).start()
        ready = self._answer(READY_TIMEOUT_SECONDS, "the ready line")
        if not ready.get("ready"):
            raise DriverError(f"the driver's first line is not ready: {ready}")
        return ready["status"]

    def announce(self, runtimes: dict[str, str] | None) -> None:
        """From the next start on, announce ``runtimes`` (None: what the implementation has), as
        after an app update that changed its runtime."""
        if "--runtimes" in self.args:
            at = self.args.index("--runtimes")
            del self.args[at:at + 2]
        if runtimes is not None:
            self.args += ["--runtimes", json.dumps(runtimes)]

    def kill(self) -> None:
        """SIGKILL: the device crashes wherever it is (mid-download, mid-write)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self._close_pipes()

    def stop(self, flush_seconds: float = 5.0) -> dict[str, Any]:
        """The ``stop`` command (windows closed, delivery tried); waits for the process to exit."""
        status = self.command("stop", flush_seconds=flush_seconds, timeout=flush_seconds + 30)["status"]
        assert self.process is not None
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired as err:
            raise DriverError("the driver answered stop but did not exit") from err
        self._close_pipes()
        return status

    def restart(self) -> dict[str, Any]:
        """Kill the process, start it again on the same state directory."""
        self.kill()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- commands -----------------------------------------------------------------------------

    def send(self, cmd: str, **fields: Any) -> None:
        """Write a command without waiting for its answer (then :meth:`receive` it, or kill)."""
        if not self.running:
            raise DriverError(f"the driver is not running (exit {self.process and self.process.returncode})"
                              f"\n{self.log_tail()}")
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = COMMAND_TIMEOUT_SECONDS, what: str = "an answer") -> dict[str, Any]:
        answer = self._answer(timeout, what)
        if answer.get("error") == "driver_error":
            raise DriverError(f"the driver failed: {answer.get('detail')}\n{self.log_tail()}")
        return answer

    def command(self, cmd: str, timeout: float = COMMAND_TIMEOUT_SECONDS, **fields: Any) -> dict[str, Any]:
        self.send(cmd, **fields)
        return self.receive(timeout, f"the answer to {cmd}")

    def status(self) -> dict[str, Any]:
        return self.command("status")["status"]

    def check_in(self) -> dict[str, Any]:
        return self.command("check_in", timeout=120)["status"]

    def close_window(self) -> dict[str, Any]:
        return self.command("close_window")["status"]

    def deliver(self) -> bool:
        return bool(self.command("deliver", timeout=120)["delivered"])

    def predict(self, inputs: dict[str, np.ndarray], label: int | None = None) -> dict[str, Any]:
        """The raw answer: ``{"outputs": {name: array}}`` or ``{"error": "no_model" | ...}``."""
        fields: dict[str, Any] = {"inputs": {name: encode_array(a) for name, a in inputs.items()}}
        if label is not None:
            fields["label"] = int(label)
        answer = self.command("predict", **fields)
        if "outputs" in answer:
            answer["outputs"] = {name: decode_array(v) for name, v in answer["outputs"].items()}
        return answer

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _answer(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise DriverError(f"no {what} from the driver within {timeout:.0f} s\n{self.log_tail()}"
                              ) from None
        if line is None:
            code = self.process.wait(timeout=10) if self.process is not None else None
            raise DriverError(f"the driver exited ({code}) before {what}\n{self.log_tail()}")
        try:
            return json.loads(line)
        except json.JSONDecodeError as err:
            raise DriverError(f"the driver wrote a line that is not JSON: {line[:200]!r}") from err

    def _close_pipes(self) -> None:
        if self.process is not None:
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def _read_lines(stream, lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        pass  # the pipe was closed under us (a kill)
    lines.put(None)

