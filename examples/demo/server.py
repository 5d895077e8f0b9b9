"""``edgeship server`` in a subprocess, with fast controller settings, for the demo and the tests.

Light on purpose (standard library only): ``tests/edge_agent/harness.py`` builds on it in a
venv that has only the agent extra. Usage::

    server = ServerProcess(data_dir, "keys/publisher.pub", report_seconds=2).start()
    server.api("POST", "/v1/models/digits-cnn/stable", {"version": "1"})   # admin JSON request
    server.stop()
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from examples.demo.processes import ROOT, child_env, free_port, spawn, stop_process

READY_TIMEOUT_SECONDS = 60.0


class ServerProcess:
    """``edgeship server`` on SQLite in ``data_dir``; restartable on the same port and data.

    The controller runs every ``controller_seconds`` over analysis windows of
    ``window_seconds`` (default: the same), and devices are told to report every
    ``report_seconds``, so rollouts move in seconds rather than hours.

    Args:
        data_dir: SQLite file, artifacts, first-start tokens and ``server.log``.
        trusted_key: publisher public key (PEM) whose releases the server accepts.
        report_seconds: the devices' reporting window.
        controller_seconds: how often the controller runs.
        window_seconds: analysis window (default: ``controller_seconds``).
        python: the interpreter that runs the server (default: this one).
        port: TCP port on 127.0.0.1 (default: a free one).
    """

    def __init__(self, data_dir: Path, trusted_key: str, report_seconds: float = 1,
                 controller_seconds: float = 1.0, window_seconds: float | None = None,
                 python: str | None = None, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.trusted_key = str(Path(trusted_key).resolve())
        self.python = python or sys.executable
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = child_env(
            EDGESHIP_REPORT_INTERVAL_SECONDS=f"{report_seconds:g}",
            EDGESHIP_CONTROLLER_INTERVAL_SECONDS=f"{controller_seconds:g}",
            EDGESHIP_ANALYSIS_WINDOW_SECONDS=f"{window_seconds or controller_seconds:g}")
        self.process: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self) -> ServerProcess:
        """Start the server and wait until ``/readyz`` answers; reads the first-start tokens.

        Raises:
            RuntimeError: the server exited or was not ready within a minute.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(
            [self.python, "-m", "edgeship.cli", "server", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--trusted-key", self.trusted_key],
            self.log_path, env=self.env, cwd=ROOT)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready in {READY_TIMEOUT_SECONDS:.0f} s: {self.log_tail()}")
            time.sleep(0.2)
        for line in (self.data_dir / "first-start-tokens.txt").read_text().splitlines():
            name, _, value = line.partition("=")
            self.tokens[name] = value
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, chars: int = 2000) -> str:
        """The end of ``server.log``."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def admin(self) -> str:
        """The admin token of the first start."""
        return self.tokens["EDGESHIP_ADMIN_TOKEN"]

    @property
    def enroll(self) -> str:
        """The enrollment token of the first start."""
        return self.tokens["EDGESHIP_ENROLL_TOKEN"]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is not None:
            stop_process(self.process, 15)
        self.process = None

    def api(self, method: str, path: str, payload: Any = None, timeout: float = 30) -> Any:
        """An admin JSON request; the decoded answer.

        Raises:
            RuntimeError: an HTTP error status, with the server's answer.
        """
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.admin}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {path}: HTTP {err.code}: {err.read().decode()[:500]}") from None

    def metrics_text(self, timeout: float = 10) -> str:
        """The server's ``/metrics`` page."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=timeout) as response:
            return response.read().decode()

    def reports(self) -> list[dict[str, Any]]:
        """Every stored report row (read straight from the SQLite file)."""
        with sqlite3.connect(self.data_dir / "edgeship.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM reports")]
