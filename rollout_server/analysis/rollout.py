"""The rollout state machine: ``decide`` and the manual transitions, all pure.

Usage::

    state = start(RolloutState(), now).state                 # pending → running, stage 0
    verdicts = assess(spec, measurements)                    # measurements.look = state.windows + 1
    decision = decide(state, verdicts, now, canary_samples=stage_canary_inferences)
    store(decision.state, verdicts); alert() if decision.alert else None

Phases (docs/rollout-analysis.md): ``pending → running(stage k) ⇄ paused → promoted | rolled_back | aborted``,
and ``running → awaiting_approval → running(stage k+1) | promoted`` before a gated stage.
A stage at 100% has no stable arm left to compare with, so it is not analysed: passing the
stage before it promotes (with the default 10 → 50 → 100, passing 50% promotes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from rollout_server.analysis.sample_ratio import SampleRatio
from rollout_server.analysis.stages import (
    DEFAULT_STAGES,
    PROMOTION_PERCENT,
    Stage,
    check_stages,
    parse_approve_before,
    parse_stages,
)
from rollout_server.analysis.verdict import Outcome, Verdict, worst

#: consecutive ``error`` windows after which a running rollout pauses and an alert fires.
ERROR_WINDOWS_TO_PAUSE = 4


class Phase(str, Enum):
    """Rollout phase; ``rollouts.phase`` stores its value.

    The groups of phases are defined here and nowhere else: the controller, the assignment
    cache and the API query the database by them (``Rollout.phase.in_(...)``), and they must
    agree with the state machine below.
    """

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @classmethod
    def active(cls) -> tuple[Phase, ...]:
        """Running, paused or awaiting approval: canary devices run the candidate at the current
        stage's share, the controller analyses it (a fail rolls back), and a model has at most one
        such rollout. ``pending`` is not active yet."""
        return (cls.RUNNING, cls.PAUSED, cls.AWAITING_APPROVAL)

    @property
    def is_terminal(self) -> bool:
        """Promoted, rolled back or aborted: nothing moves any more."""
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED)

    @property
    def is_active(self) -> bool:
        """One of :meth:`active`."""
        return self in Phase.active()


class Action(str, Enum):
    """What a decision did, for the audit log and metrics."""

    NONE = "none"
    START = "start"
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    AWAIT_APPROVAL = "await_approval"
    APPROVE = "approve"


class InvalidTransition(ValueError):
    """A manual action that the current phase does not allow (e.g. resume a rolled-back rollout)."""


@dataclass(frozen=True)
class RolloutState:
    """Everything ``decide`` needs to remember between windows (store it as a dict).

    Attributes:
        stages: the ramp.
        phase: current phase.
        stage_index: index into ``stages`` while running or paused.
        stage_started_at: epoch seconds when the current stage began (data are cumulative from it).
        windows: analyses applied so far; the next one is look ``windows + 1``.
        consecutive_error_windows: windows in a row with an ``error`` verdict.
        reason: why the last transition happened.
        approve_before: percents of the stages that wait for an operator's approval before they
            start (100: before promotion), see ``stages.parse_approve_before``.
        approval_pending: an approval is awaited (``awaiting_approval``, or ``paused`` from it:
            resuming returns there).
        approval_requested_at: epoch seconds when the pending approval was requested.
    """

    stages: tuple[Stage, ...] = DEFAULT_STAGES
    phase: Phase = Phase.PENDING
    stage_index: int = 0
    stage_started_at: float | None = None
    windows: int = 0
    consecutive_error_windows: int = 0
    reason: str = ""
    approve_before: tuple[float, ...] = ()
    approval_pending: bool = False
    approval_requested_at: float | None = None

    def __post_init__(self) -> None:
        check_stages(self.stages)
        object.__setattr__(self, "approve_before", parse_approve_before(self.approve_before, self.stages))
        if not 0 <= self.stage_index < len(self.stages):
            raise ValueError(f"stage_index {self.stage_index} outside the {len(self.stages)} stages")

    @property
    def stage(self) -> Stage:
        """The current stage."""
        return self.stages[self.stage_index]

    @property
    def canary_percent(self) -> float:
        """Share the assignment should use now: stage percent while active, 100 once promoted, else 0."""
        if self.phase.is_active:
            return self.stage.percent
        return 100.0 if self.phase is Phase.PROMOTED else 0.0

    @property
    def next_percent(self) -> float:
        """The share the next forward move reaches: the next analysed stage's, else 100 (promotion)."""
        following = self.stage_index + 1
        if following >= len(self.stages) or self.stages[following].percent >= PROMOTION_PERCENT:
            return PROMOTION_PERCENT
        return self.stages[following].percent

    @property
    def next_move(self) -> str:
        """``"advance to 50%"`` or ``"promote"``, for reasons."""
        percent = self.next_percent
        return "promote" if percent >= PROMOTION_PERCENT else f"advance to {percent:g}%"

    @property
    def next_look(self) -> int:
        """``Measurements.look`` for the next analysis."""
        return self.windows + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the inverse of :meth:`from_dict`)."""
        return {
            "stages": [s.to_dict() for s in self.stages],
            "phase": self.phase.value,
            "stage_index": self.stage_index,
            "stage_started_at": self.stage_started_at,
            "windows": self.windows,
            "consecutive_error_windows": self.consecutive_error_windows,
            "reason": self.reason,
            "approve_before": list(self.approve_before),
            "approval_pending": self.approval_pending,
            "approval_requested_at": self.approval_requested_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        """Read back a stored state.

        Raises:
            ValueError: a field is missing or invalid.
        """
        try:
            phase = Phase(data.get("phase", "pending"))
        except ValueError:
            raise ValueError(
                f"phase must be one of {[p.value for p in Phase]}, got {data.get('phase')!r}"
            ) from None
        started = data.get("stage_started_at")
        requested = data.get("approval_requested_at")
        try:
            return cls(
                stages=parse_stages(data.get("stages")),
                phase=phase,
                stage_index=int(data.get("stage_index", 0)),
                stage_started_at=None if started is None else float(started),
                windows=int(data.get("windows", 0)),
                consecutive_error_windows=int(data.get("consecutive_error_windows", 0)),
                reason=str(data.get("reason", "")),
                approve_before=tuple(data.get("approve_before") or ()),
                approval_pending=bool(data.get("approval_pending", False)),
                approval_requested_at=None if requested is None else float(requested),
            )
        except TypeError as exc:
            raise ValueError(f"rollout state has a field of the wrong type: {exc}") from None


@dataclass(frozen=True)
class Decision:
    """The new state and what happened.

    Attributes:
        state: state after the decision (equal to the input when nothing changed).
        action: what was done.
        reason: a sentence for the audit log and status.
        alert: True when an operator must be alerted (paused after repeated errors).
    """

    state: RolloutState
    action: Action
    reason: str
    alert: bool = False


def decide(
    state: RolloutState,
    verdicts: Sequence[Verdict],
    now: float,
    *,
    canary_samples: int,
    error_windows_to_pause: int = ERROR_WINDOWS_TO_PAUSE,
    sample_ratio: SampleRatio | None = None,
    hold: str | None = None,
) -> Decision:
    """Apply one analysis window's verdicts.

    Rules, in order: any ``fail`` rolls back at once (running, paused or awaiting approval);
    while running or awaiting, a sample ratio mismatch pauses (with an alert: the arms are no
    longer comparable); an ``error`` counts towards a pause after ``error_windows_to_pause``
    windows in a row (with an alert) and otherwise holds; awaiting approval holds;
    ``inconclusive`` (or no verdict at all) holds; all ``pass`` advances once the stage's minimum
    duration and sample count are reached (passing the last analysed stage promotes), unless
    ``hold`` says why no forward move is allowed now (a schedule) or the next stage is gated
    (then the rollout awaits approval). Paused rollouts only count the window.

    Args:
        state: current state.
        verdicts: this window's verdicts (``assess``).
        now: epoch seconds.
        canary_samples: canary inferences collected since the stage started.
        error_windows_to_pause: see :data:`ERROR_WINDOWS_TO_PAUSE`.
        sample_ratio: this window's sample ratio test (None: not tested).
        hold: why the rollout may not move forward now (``schedule.hold_reason``); None: it may.
            Safety moves (rollback, pause) ignore it.
    """
    if not state.phase.is_active:
        return Decision(state, Action.NONE, f"rollout is {state.phase.value}: window not applied")
    outcome = worst(v.outcome for v in verdicts)
    counted = replace(state, windows=state.windows + 1)
    if outcome is Outcome.FAIL:
        reason = "; ".join(v.reason for v in verdicts if v.outcome is Outcome.FAIL)
        return Decision(replace(counted, phase=Phase.ROLLED_BACK, approval_pending=False, reason=reason),
                        Action.ROLLBACK, reason)
    if state.phase is Phase.PAUSED:
        return Decision(counted, Action.NONE, "rollout is paused: no fail, nothing to do")
    if sample_ratio is not None and sample_ratio.mismatch:
        reason = f"pausing: {sample_ratio.reason}"
        return Decision(replace(counted, phase=Phase.PAUSED, reason=reason), Action.PAUSE, reason, alert=True)
    if outcome is Outcome.ERROR:
        errors = state.consecutive_error_windows + 1
        counted = replace(counted, consecutive_error_windows=errors)
        detail = "; ".join(v.reason for v in verdicts if v.outcome is Outcome.ERROR)
        if errors >= error_windows_to_pause:
            reason = f"{errors} consecutive error windows, pausing: {detail}"
            return Decision(
                replace(counted, phase=Phase.PAUSED, reason=reason), Action.PAUSE, reason, alert=True
            )
        return Decision(
            counted, Action.HOLD, f"error window {errors}/{error_windows_to_pause}, holding: {detail}"
        )
    counted = replace(counted, consecutive_error_windows=0)
    if state.phase is Phase.AWAITING_APPROVAL:
        return Decision(counted, Action.HOLD, f"awaiting approval to {state.next_move} "
                                              f"(guards: {outcome.value})")
    if outcome is Outcome.INCONCLUSIVE:
        detail = "; ".join(v.reason for v in verdicts if v.outcome is Outcome.INCONCLUSIVE) or "no verdicts"
        return Decision(counted, Action.HOLD, f"holding stage {state.stage_index + 1}: {detail}")
    return _maybe_advance(counted, now, canary_samples, hold)


def _maybe_advance(state: RolloutState, now: float, canary_samples: int, hold: str | None) -> Decision:
    stage = state.stage
    elapsed = now - (state.stage_started_at if state.stage_started_at is not None else now)
    waiting = []
    if elapsed < stage.min_duration_seconds:
        waiting.append(f"{elapsed:.0f}/{stage.min_duration_seconds:.0f} s")
    if canary_samples < stage.min_samples:
        waiting.append(f"{canary_samples:,}/{stage.min_samples:,} canary samples")
    if waiting:
        return Decision(
            state, Action.HOLD, f"all guards pass at {stage.percent:g}%, waiting for " + ", ".join(waiting)
        )
    following = state.stage_index + 1
    passed = f"all guards passed the {stage.percent:g}% stage ({elapsed:.0f} s, {canary_samples:,} samples)"
    if hold:
        return Decision(state, Action.HOLD, f"{passed}, holding: {hold}")
    if state.next_percent in state.approve_before:
        reason = f"{passed}: awaiting approval to {state.next_move}"
        awaiting = replace(state, phase=Phase.AWAITING_APPROVAL, approval_pending=True,
                           approval_requested_at=now, reason=reason)
        return Decision(awaiting, Action.AWAIT_APPROVAL, reason)
    if state.next_percent >= PROMOTION_PERCENT:
        reason = f"{passed}: promoted"
        return Decision(replace(state, phase=Phase.PROMOTED, reason=reason), Action.PROMOTE, reason)
    reason = f"{passed}: advancing to {state.stages[following].percent:g}%"
    advanced = replace(state, stage_index=following, stage_started_at=now, reason=reason)
    return Decision(advanced, Action.ADVANCE, reason)


def _require(state: RolloutState, action: str, *allowed: Phase) -> None:
    if state.phase not in allowed:
        names = " or ".join(p.value for p in allowed)
        raise InvalidTransition(f"cannot {action} a rollout that is {state.phase.value} (only {names})")


def start(state: RolloutState, now: float) -> Decision:
    """pending → running at the first stage."""
    _require(state, "start", Phase.PENDING)
    reason = f"started at {state.stages[0].percent:g}%"
    return Decision(
        replace(state, phase=Phase.RUNNING, stage_index=0, stage_started_at=now, reason=reason),
        Action.START,
        reason,
    )


def pause(state: RolloutState, now: float, reason: str = "paused by operator") -> Decision:
    """running or awaiting approval → paused (canary devices keep their assignment; a fail still
    rolls back; an approval awaited stays awaited)."""
    _require(state, "pause", Phase.RUNNING, Phase.AWAITING_APPROVAL)
    return Decision(replace(state, phase=Phase.PAUSED, reason=reason), Action.PAUSE, reason)


def resume(state: RolloutState, now: float, reason: str = "resumed by operator") -> Decision:
    """paused → running, same stage and stage clock, error count reset; back to
    ``awaiting_approval`` if it was paused while an approval was awaited."""
    _require(state, "resume", Phase.PAUSED)
    phase = Phase.AWAITING_APPROVAL if state.approval_pending else Phase.RUNNING
    resumed = replace(state, phase=phase, consecutive_error_windows=0, reason=reason)
    return Decision(resumed, Action.RESUME, reason)


def approve(state: RolloutState, now: float, reason: str = "approved by operator") -> Decision:
    """awaiting approval → the gated stage starts now (running), or promoted when the gate was
    before promotion."""
    _require(state, "approve", Phase.AWAITING_APPROVAL)
    cleared = replace(state, approval_pending=False, approval_requested_at=None, consecutive_error_windows=0)
    if state.next_percent >= PROMOTION_PERCENT:
        reason = f"{reason}: promoted"
        return Decision(replace(cleared, phase=Phase.PROMOTED, reason=reason), Action.APPROVE, reason)
    reason = f"{reason}: starting the {state.next_percent:g}% stage"
    started = replace(cleared, phase=Phase.RUNNING, stage_index=state.stage_index + 1, stage_started_at=now,
                      reason=reason)
    return Decision(started, Action.APPROVE, reason)


def promote(state: RolloutState, now: float, reason: str = "promoted by operator") -> Decision:
    """running, paused or awaiting approval → promoted (manual override of the remaining stages)."""
    _require(state, "promote", Phase.RUNNING, Phase.PAUSED, Phase.AWAITING_APPROVAL)
    return Decision(replace(state, phase=Phase.PROMOTED, approval_pending=False, reason=reason),
                    Action.PROMOTE, reason)


def abort(state: RolloutState, now: float, reason: str = "aborted by operator") -> Decision:
    """pending, running, paused or awaiting approval → aborted (every device back to stable)."""
    _require(state, "abort", Phase.PENDING, *Phase.active())
    return Decision(replace(state, phase=Phase.ABORTED, approval_pending=False, reason=reason),
                    Action.ABORT, reason)
