"""A real rollout server in a subprocess, and the example releases, for the agent's tests.

Everything server- or torch-side runs in the toolchain interpreter (``$EDGESHIP_TOOLCHAIN_PYTHON``,
default: this one), through the ``edgeship`` CLI, so these tests also run from a venv that has
only the agent extra installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from examples.demo.processes import free_port
from examples.demo.server import ServerProcess as DemoServerProcess

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["ROOT", "ServerProcess", "build_releases", "edgeship", "free_port", "toolchain_python"]


def toolchain_python() -> str:
    return os.environ.get("EDGESHIP_TOOLCHAIN_PYTHON") or sys.executable


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_TOKEN"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def edgeship(*args: Any, token: str | None = None, timeout: float = 120) -> str:
    """Run the ``edgeship`` CLI in the toolchain interpreter; return stdout, raise on failure."""
    env = _env(**({"EDGESHIP_TOKEN": token} if token else {}))
    done = subprocess.run([toolchain_python(), "-m", "edgeship.cli", *map(str, args)], capture_output=True,
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


class ServerProcess(DemoServerProcess):
    """``edgeship server`` on SQLite in ``data_dir``, in the toolchain interpreter; restartable on
    the same port and data (:class:`examples.demo.server.ServerProcess`, plus the admin CLI).

    The controller runs every ``controller_seconds`` over windows of the same length, and
    devices are told to report every ``report_seconds``, so rollouts move in seconds.
    """

    def __init__(self, data_dir: Path, trusted_key: str, report_seconds: int = 1,
                 controller_seconds: float = 1.0) -> None:
        super().__init__(data_dir, trusted_key, report_seconds=report_seconds,
                         controller_seconds=controller_seconds, python=toolchain_python())

    def cli(self, *args: Any) -> str:
        """An admin ``edgeship`` command against this server."""
        return edgeship(*args, "--server", self.url, token=self.admin)

    def publish(self, release_dir: str) -> None:
        self.cli("publish", release_dir)

    def set_stable(self, model: str, version: str) -> None:
        self.cli("models", "set-stable", model, version)
