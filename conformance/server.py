"""The real ``edgeship server`` the kit judges devices against, and what the kit asks of it.

One server per kit run (SQLite, loopback HTTP) with the example releases published: v1 stable,
v2 a normal update, v3 a release whose golden set disagrees with its model. Settings make the
protocol's timings visible within seconds: report windows of 1 s, no assignment cache (a change
reaches the next poll), pending devices told to come back after 2 s, and no rollout controller
(a scenario's rollout moves only when the scenario moves it).

What a device did is read from the server's own records (its SQLite file), never from the device.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from examples.demo.processes import ROOT, child_env
from examples.demo.server import ServerProcess

MODEL = "digits-cnn"
REPORT_INTERVAL_SECONDS = 1
PENDING_RETRY_SECONDS = 2

#: phases after which a rollout holds no device (any other one is aborted by :meth:`reset`).
TERMINAL_PHASES = ("promoted", "rolled_back", "aborted")


class KitServer(ServerProcess):
    """``edgeship server`` with the kit's settings (module docstring) and the admin calls it needs."""

    def __init__(self, data_dir: Path, trusted_key: str) -> None:
        super().__init__(data_dir, trusted_key, report_seconds=REPORT_INTERVAL_SECONDS)
        self.env.update(EDGESHIP_ASSIGNMENT_CACHE_SECONDS="0", EDGESHIP_CONTROLLER_ENABLED="false",
                        EDGESHIP_PENDING_RETRY_SECONDS=str(PENDING_RETRY_SECONDS))

    def publish(self, release_dir: str) -> None:
        """``edgeship publish`` (the server verifies the release against its trusted key)."""
        env = {**child_env(), "EDGESHIP_TOKEN": self.admin}
        command = [self.python, "-m", "edgeship.cli", "publish", release_dir, "--server", self.url]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"publishing {release_dir} failed: {done.stderr[-2000:]}")

    def set_stable(self, version: str) -> None:
        self.api("POST", f"/v1/models/{MODEL}/stable", {"version": version})

    def enroll_token(self, name: str, **policy: Any) -> str:
        """A new enrollment token (``admission="manual"``: its devices wait for an operator)."""
        return self.api("POST", "/v1/tokens", {"name": name, "role": "enroll", **policy})["token"]

    def accept(self, device_id: str) -> None:
        self.api("POST", f"/v1/devices/{device_id}/accept")

    def revoke(self, device_id: str) -> None:
        self.api("POST", f"/v1/devices/{device_id}/revoke")

    def start_rollout(self, candidate: str, percent: float = 99.99) -> int:
        """A rollout of ``candidate`` whose first stage takes ``percent`` of the devices (a stage of
        100% has no stable arm; the server refuses it)."""
        body = {"model": MODEL, "candidate_version": candidate,
                "stages": [{"percent": percent}, {"percent": 100}]}
        return int(self.api("POST", "/v1/rollouts", body)["id"])

    def abort_rollout(self, rollout_id: int) -> None:
        """Roll back: every device of the rollout returns to the stable release."""
        self.api("POST", f"/v1/rollouts/{rollout_id}/abort", {"reason": "conformance kit"})

    def reset(self) -> None:
        """Back to v1 stable and no active rollout, whatever a scenario left."""
        for rollout in self.api("GET", f"/v1/rollouts?model={MODEL}")["rollouts"]:
            if rollout["phase"] not in TERMINAL_PHASES:
                self.abort_rollout(rollout["id"])
        self.set_stable("1")

    def device_reports(self, device_id: str) -> list[dict[str, Any]]:
        """The device's stored reports, oldest window first, with the release's ``version`` and
        the window's length in seconds (``window_seconds``)."""
        with sqlite3.connect(self.data_dir / "edgeship.db") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute(
                "SELECT reports.*, releases.version AS version FROM reports "
                "LEFT JOIN releases ON reports.release_id = releases.id "
                "WHERE reports.device_id = ? ORDER BY reports.window_end, reports.id", (device_id,))]
        for row in rows:
            row["window_seconds"] = (_time(row["window_end"]) - _time(row["window_start"])).total_seconds()
        return rows

    def device_row(self, device_id: str) -> dict[str, Any] | None:
        with sqlite3.connect(self.data_dir / "edgeship.db") as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        return dict(row) if row is not None else None


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)
