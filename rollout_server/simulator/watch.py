"""Following one rollout while the fleet runs: its phase, stage and canary share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rollout_server.analysis import Phase
from rollout_server.simulator.errors import SimulatorError
from rollout_server.simulator.safety import Target
from rollout_server.simulator.transport import Connection

#: phases after which nothing moves any more, as the server's API spells them.
TERMINAL_PHASES = frozenset(p.value for p in Phase if p.is_terminal)


@dataclass(frozen=True)
class RolloutStatus:
    """The parts of ``GET /v1/rollouts/<id>`` the live line and the summary show.

    Attributes:
        rollout_id: the rollout.
        phase: ``running``, ``paused``, ``promoted``, ...
        stage: current stage, 1-based.
        stages: number of stages.
        canary_percent: the share the assignment uses now.
        reason: why the last transition happened.
    """

    rollout_id: int
    phase: str
    stage: int
    stages: int
    canary_percent: float
    reason: str

    @property
    def is_terminal(self) -> bool:
        """Promoted, rolled back or aborted."""
        return self.phase in TERMINAL_PHASES

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return {"id": self.rollout_id, "phase": self.phase, "stage": self.stage, "stages": self.stages,
                "canary_percent": self.canary_percent, "reason": self.reason}


class RolloutWatcher:
    """Reads one rollout's status with an operator (viewer or above) token.

    Args:
        target: the checked server.
        rollout_id: the rollout to follow.
        token: an operator token.
        timeout_seconds: per request.
    """

    def __init__(self, target: Target, rollout_id: int, token: str, timeout_seconds: float = 10.0) -> None:
        self.rollout_id = rollout_id
        self._token = token
        self._conn = Connection(target, timeout_seconds)
        self.last: RolloutStatus | None = None

    def status(self) -> RolloutStatus | None:
        """The current status, or ``None`` when the server did not answer this time.

        Raises:
            SimulatorError: the rollout does not exist or the token is refused.
        """
        answer = self._conn.request("GET", f"/v1/rollouts/{self.rollout_id}",
                                    headers={"Authorization": f"Bearer {self._token}"})
        body = answer.json()
        if answer.status in (401, 403, 404):
            detail = body.get("detail") if isinstance(body, dict) else answer.body[:200]
            raise SimulatorError(f"--watch-rollout {self.rollout_id}: HTTP {answer.status}: {detail}")
        if answer.status != 200 or not isinstance(body, dict):
            return None
        self.last = RolloutStatus(int(body["id"]), body["phase"], int(body["stage"]), int(body["stages"]),
                                  float(body["canary_percent"]), body.get("reason") or "")
        return self.last

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
