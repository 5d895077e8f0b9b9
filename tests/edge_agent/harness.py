"""A real rollout server in a subprocess, and the example releases, for the agent's tests.

Everything server- or torch-side runs in the toolchain interpreter (``$EDGESHIP_TOOLCHAIN_PYTHON``,
default: this one), through the ``edgeship`` CLI, so these tests also run from a venv that has
only the agent extra installed.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def toolchain_python() -> str:
    return os.environ.get("EDGESHIP_TOOLCHAIN_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_TOKEN"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def edgeship(*args: Any, token: str | None = None, timeout: float = 120) -> str:
    """Run the ``edgeship`` CLI in the toolchain interpreter; return stdout, raise on failure."""
    env = _env(**({"EDGESHIP_TOKEN": token} if token else {}))
    done = subprocess.run([toolchain_python(), "-m", "converter.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"edgeship {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def build_releases(out: Path) -> dict[str, Any]:
    """``examples.releases`` in the toolchain interpreter (trains and converts: ~30 s)."""
    done = subprocess.run([toolchain_python(), "-m", "examples.releases", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"building the example releases failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class ServerProcess:
    """``edgeship server`` on SQLite in ``data_dir``; restartable on the same port and data.

    The controller runs every ``controller_seconds`` over windows of the same length, and
    devices are told to report every ``report_seconds``, so rollouts move in seconds.
    """

    def __init__(self, data_dir: Path, trusted_key: str, report_seconds: int = 1,
                 controller_seconds: float = 1.0) -> None:
        self.data_dir = data_dir
        self.trusted_key = trusted_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _env(EDGESHIP_REPORT_INTERVAL_SECONDS=str(report_seconds),
                        EDGESHIP_CONTROLLER_INTERVAL_SECONDS=str(controller_seconds),
                        EDGESHIP_ANALYSIS_WINDOW_SECONDS=str(controller_seconds))
        self.process: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [toolchain_python(), "-m", "converter.cli", "server", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--trusted-key", self.trusted_key],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {(self.data_dir / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready in 60 s")
        for line in (self.data_dir / "first-start-tokens.txt").read_text().splitlines():
            name, _, value = line.partition("=")
            self.tokens[name] = value
        return self

    @property
    def admin(self) -> str:
        return self.tokens["EDGESHIP_ADMIN_TOKEN"]

    @property
    def enroll(self) -> str:
        return self.tokens["EDGESHIP_ENROLL_TOKEN"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cli(self, *args: Any) -> str:
        """An admin ``edgeship`` command against this server."""
        return edgeship(*args, "--server", self.url, token=self.admin)

    def publish(self, release_dir: str) -> None:
        self.cli("publish", release_dir)

    def set_stable(self, model: str, version: str) -> None:
        self.cli("models", "set-stable", model, version)

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        """An admin JSON request."""
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.admin}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {path}: HTTP {err.code}: {err.read().decode()[:500]}") from None

    def reports(self) -> list[dict[str, Any]]:
        """Every stored report row (read straight from the SQLite file)."""
        with sqlite3.connect(self.data_dir / "edgeship.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM reports")]
