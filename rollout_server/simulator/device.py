"""One lightweight simulated device: register, poll the assignment with its ETag, report.

Not the edge agent (``edge_agent/`` runs real models): a device here is a few attributes and a
:meth:`SimDevice.tick` that a worker calls once per reporting window. Each tick reports the
window that just ended, drawn from the profile of the release the device was running, then
polls the assignment (``If-None-Match``) for the next window, as a real device does.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.contract.reports import MAX_BATCH
from rollout_server.simulator.fleet import DeviceSpec
from rollout_server.simulator.profiles import Behaviour, ProfileTable, draw_window
from rollout_server.simulator.stats import WorkerStats
from rollout_server.simulator.transport import NO_RESPONSE, Answer, Connection

#: reports per ``POST /v1/reports`` (the server's maximum batch).
#: statuses after which a device stops: its credential or enrollment is not accepted.
REFUSED = (401, 403)


@dataclass(frozen=True)
class Assignment:
    """The parts of ``GET /v1/devices/<id>/assignment`` a simulated device acts on.

    Attributes:
        cohort: ``stable`` or ``canary``.
        version: release version to run.
        variant: variant id to run.
        rollout_id: the rollout, if any (reports carry it).
        shadow: ``(version, variant, sample_share)`` of a shadow candidate, if any.
    """

    cohort: str
    version: str
    variant: str
    rollout_id: int | None
    shadow: tuple[str, str, float] | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Assignment:
        shadow = body.get("shadow")
        return cls(
            cohort=body["cohort"], version=str(body["version"]), variant=body["variant"]["id"],
            rollout_id=body.get("rollout_id"),
            shadow=(str(shadow["version"]), shadow["variant_id"], float(shadow.get("sample_share", 0.1)))
            if shadow else None,
        )


@dataclass(frozen=True)
class DeviceSettings:
    """What every device of a run shares.

    Attributes:
        model: model name the devices poll for.
        enrollment_token: for ``POST /v1/devices/register``.
        profiles: behaviour per release.
        inferences_per_second: mean inferences per device per *simulated* second.
        time_scale: simulated seconds per real second (each real window stands for this many
            times its length of traffic).
        labelled_fraction: share of successful inferences with a label.
        run_id: prefix of report ids, unique per run.
    """

    model: str
    enrollment_token: str
    profiles: ProfileTable
    inferences_per_second: float
    time_scale: float
    labelled_fraction: float
    run_id: str


def iso_utc(unix_seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as the server parses."""
    return dt.datetime.fromtimestamp(unix_seconds, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


class SimDevice:
    """One simulated device; driven by one worker thread only.

    Args:
        index: position in the fleet (part of its report ids).
        spec: what it registers as.
    """

    __slots__ = ("_behaviours", "assignment", "credential", "device_id", "dropped_windows", "etag", "index",
                 "load_failed_pending", "outbox", "refused", "report_seq", "spec", "window_opened_at")

    def __init__(self, index: int, spec: DeviceSpec) -> None:
        self.index = index
        self.spec = spec
        self.device_id: str | None = None
        self.credential: str | None = None
        self.etag: str | None = None
        self.assignment: Assignment | None = None
        self.window_opened_at: float | None = None
        self.outbox: list[dict[str, Any]] = []
        self.report_seq = 0
        self.dropped_windows = 0
        self.load_failed_pending = False
        self.refused = False
        self._behaviours: dict[str, Behaviour] = {}

    def tick(self, conn: Connection, settings: DeviceSettings, rng: np.random.Generator,
             stats: WorkerStats, now: float) -> bool:
        """One reporting window: report the window that ended at ``now`` (unix seconds), then
        poll the assignment. Registers first if needed. Returns False once the server refused
        the device (it is not ticked again)."""
        if self.device_id is None:
            if self._register(conn, settings, stats):
                self._poll(conn, settings, rng, stats)
                self.window_opened_at = now
            return not self.refused
        if self.assignment is not None and self.window_opened_at is not None:
            self._close_window(settings, rng, now)
        self.window_opened_at = now
        if self.outbox:
            self._post_reports(conn, stats)
        if not self.refused:
            self._poll(conn, settings, rng, stats)
        return not self.refused

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    def _register(self, conn: Connection, settings: DeviceSettings, stats: WorkerStats) -> bool:
        body = json.dumps(self.spec.registration(settings.enrollment_token)).encode()
        answer = conn.request("POST", "/v1/devices/register", body=body)
        stats.record("register", answer)
        data = answer.json() if answer.status == 201 else None
        if isinstance(data, dict) and data.get("device_id") and data.get("credential"):
            self.device_id, self.credential = data["device_id"], data["credential"]
            return True
        self.refused = answer.status in REFUSED
        return False

    def _poll(self, conn: Connection, settings: DeviceSettings, rng: np.random.Generator,
              stats: WorkerStats) -> None:
        headers = self._headers()
        if self.etag:
            headers["If-None-Match"] = self.etag
        answer = conn.request("GET", f"/v1/devices/{self.device_id}/assignment?model={settings.model}",
                              headers=headers)
        stats.record("assignment", answer)
        if answer.status == 200:
            self._adopt(answer, settings, rng)
        elif answer.status in (404, 409):  # no stable release yet, or no variant runs here
            self.assignment, self.etag = None, None
        elif answer.status in REFUSED:
            self.refused = True

    def _adopt(self, answer: Answer, settings: DeviceSettings, rng: np.random.Generator) -> None:
        body = answer.json()
        try:
            new = Assignment.from_body(body)
        except (KeyError, TypeError, ValueError):
            return  # not an assignment document: keep the old one, poll again next window
        old = self.assignment
        if old is None or (old.version, old.variant) != (new.version, new.variant):
            # an install: the release loads (or fails to) before its first inference
            self.load_failed_pending = bool(rng.random() < self._behaviour(settings, rng, new.version,
                                                                           new.variant).load_failure_rate)
        self.assignment, self.etag = new, answer.etag

    def _behaviour(self, settings: DeviceSettings, rng: np.random.Generator, version: str,
                   variant: str) -> Behaviour:
        key, profile = settings.profiles.lookup(version, variant)
        behaviour = self._behaviours.get(key)
        if behaviour is None:
            behaviour = self._behaviours[key] = profile.for_device(rng)
        return behaviour

    def _close_window(self, settings: DeviceSettings, rng: np.random.Generator, now: float) -> None:
        current = self.assignment
        opened = self.window_opened_at
        if current is None or opened is None:
            return
        behaviour = self._behaviour(settings, rng, current.version, current.variant)
        share, agreement = 0.0, 1.0
        if current.shadow is not None:
            version, variant, share = current.shadow
            agreement = self._behaviour(settings, rng, version, variant).shadow_agreement
        simulated_seconds = max(0.0, now - opened) * settings.time_scale
        counts = draw_window(rng, behaviour, settings.inferences_per_second * simulated_seconds,
                             settings.labelled_fraction, share, agreement)
        if self.load_failed_pending:
            counts["errors"]["load_failed"] = 1
            self.load_failed_pending = False
        self.report_seq += 1
        report = {"id": f"{settings.run_id}-{self.index}-{self.report_seq}", "model": settings.model,
                  "version": current.version, "variant": current.variant, "rollout_id": current.rollout_id,
                  "cohort": current.cohort, "window_start": iso_utc(opened), "window_end": iso_utc(now),
                  **counts}
        if self.dropped_windows:
            report["dropped_windows"], self.dropped_windows = self.dropped_windows, 0
        self.outbox.append(report)
        if len(self.outbox) > MAX_BATCH:  # the server was unreachable for 100 windows: drop the oldest
            del self.outbox[0]
            self.dropped_windows += 1

    def _post_reports(self, conn: Connection, stats: WorkerStats) -> None:
        batch = self.outbox[:MAX_BATCH]
        answer = conn.request("POST", "/v1/reports", body=json.dumps({"reports": batch}).encode(),
                              headers=self._headers())
        stats.record("reports", answer)
        if answer.status == 200:
            data = answer.json() or {}
            stats.count_reports(batch, set(data.get("accepted", [])), len(data.get("duplicates", [])))
            del self.outbox[: len(batch)]
        elif answer.status == NO_RESPONSE or answer.status >= 500 or answer.status == 409:
            return  # keep them: sent again (same ids) with the next window
        else:
            stats.count_rejected(len(batch))
            del self.outbox[: len(batch)]
            self.refused = answer.status in REFUSED
