"""The rollout state machine: decide's rules and the manual transitions, all pure."""

from __future__ import annotations

import pytest

from rollout_server.analysis import (
    Action,
    ArmWindow,
    GuardSpec,
    InvalidTransition,
    Measurements,
    Outcome,
    Phase,
    RolloutState,
    Stage,
    Verdict,
    abort,
    assess,
    decide,
    pause,
    promote,
    resume,
    start,
)

STAGES = (Stage(10, 600, 1000), Stage(50, 600, 1000), Stage(100, 0, 0))
PASS = (Verdict(Outcome.PASS, "error_rate: fine", guard="error_rate"), Verdict(Outcome.PASS, "latency: ok"))
HOLD = (Verdict(Outcome.PASS, "error_rate: fine"), Verdict(Outcome.INCONCLUSIVE, "latency: too few samples"))
FAIL = (Verdict(Outcome.FAIL, "error_rate: canary 2% vs 1%"), Verdict(Outcome.PASS, "latency: ok"))
ERROR = (Verdict(Outcome.ERROR, "accuracy: inconsistent data"), Verdict(Outcome.PASS, "latency: ok"))


def running(now: float = 0.0) -> RolloutState:
    return start(RolloutState(stages=STAGES), now).state


def test_phases():
    assert [p for p in Phase if p.is_terminal] == [Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED]
    assert RolloutState().phase is Phase.PENDING and RolloutState().canary_percent == 0
    state = running()
    assert state.phase is Phase.RUNNING and state.canary_percent == 10 and state.next_look == 1


def test_any_fail_rolls_back_at_once_with_the_reason():
    decision = decide(running(), FAIL, 60, canary_samples=10)
    assert decision.action is Action.ROLLBACK and decision.state.phase is Phase.ROLLED_BACK
    assert "canary 2% vs 1%" in decision.reason and decision.state.reason == decision.reason
    assert decision.state.canary_percent == 0


def test_inconclusive_holds_and_never_promotes():
    state = running()
    for minute in range(1, 200):
        decision = decide(state, HOLD, 60.0 * minute, canary_samples=10**6)
        assert decision.action is Action.HOLD and "too few samples" in decision.reason
        state = decision.state
    assert state.phase is Phase.RUNNING and state.stage_index == 0 and state.windows == 199


def test_no_verdicts_hold():
    assert decide(running(), (), 10_000, canary_samples=10**6).action is Action.HOLD


def test_stage_advances_after_duration_and_samples_then_promotes():
    state = running(now=0)
    assert "waiting" in decide(state, PASS, 300, canary_samples=5000).reason  # too early
    assert decide(state, PASS, 900, canary_samples=500).action is Action.HOLD  # too few samples
    decision = decide(state, PASS, 900, canary_samples=5000)
    assert decision.action is Action.ADVANCE and decision.state.canary_percent == 50
    assert decision.state.stage_started_at == 900
    state = decision.state
    assert decide(state, PASS, 1200, canary_samples=5000).action is Action.HOLD
    decision = decide(state, PASS, 1500, canary_samples=5000)
    assert decision.action is Action.PROMOTE and decision.state.phase is Phase.PROMOTED
    assert decision.state.canary_percent == 100
    assert decide(decision.state, FAIL, 2000, canary_samples=1).action is Action.NONE  # terminal


def test_four_consecutive_error_windows_pause_and_alert():
    state = running()
    for window in range(1, 4):
        decision = decide(state, ERROR, 60.0 * window, canary_samples=0)
        assert decision.action is Action.HOLD and not decision.alert
        state = decision.state
    decision = decide(state, ERROR, 240, canary_samples=0)
    assert decision.action is Action.PAUSE and decision.alert and decision.state.phase is Phase.PAUSED
    assert "4 consecutive error windows" in decision.reason


def test_a_good_window_resets_the_error_count():
    state = running()
    for verdicts in (ERROR, ERROR, ERROR, HOLD, ERROR, ERROR, ERROR):
        state = decide(state, verdicts, 60, canary_samples=0).state
    assert state.phase is Phase.RUNNING and state.consecutive_error_windows == 3


def test_inconsistent_reports_pause_through_assess():
    bad = ArmWindow(inferences=10, labelled_samples=5, labelled_correct=9)
    state = running()
    for window in range(4):
        verdicts = assess(GuardSpec.default(), Measurements(bad, bad, look=state.next_look))
        decision = decide(state, verdicts, 60.0 * window, canary_samples=10)
        state = decision.state
    assert state.phase is Phase.PAUSED and decision.alert


def test_paused_rollout_still_rolls_back_on_fail_but_does_not_advance():
    paused = pause(running(), 10).state
    assert decide(paused, PASS, 10**6, canary_samples=10**6).action is Action.NONE
    assert decide(paused, FAIL, 10**6, canary_samples=0).state.phase is Phase.ROLLED_BACK


def test_manual_transitions():
    state = running()
    paused = pause(state, 1).state
    assert paused.phase is Phase.PAUSED and paused.canary_percent == 10
    resumed = resume(paused, 2)
    assert resumed.action is Action.RESUME and resumed.state.phase is Phase.RUNNING
    assert promote(paused, 3).state.phase is Phase.PROMOTED
    assert abort(state, 4, "bad idea").state.reason == "bad idea"
    assert abort(RolloutState(), 4).state.phase is Phase.ABORTED


@pytest.mark.parametrize(
    ("action", "state"),
    [
        (resume, RolloutState(stages=STAGES, phase=Phase.ROLLED_BACK)),
        (resume, RolloutState(stages=STAGES, phase=Phase.RUNNING)),
        (pause, RolloutState(stages=STAGES, phase=Phase.PAUSED)),
        (promote, RolloutState(stages=STAGES, phase=Phase.PENDING)),
        (abort, RolloutState(stages=STAGES, phase=Phase.PROMOTED)),
        (start, RolloutState(stages=STAGES, phase=Phase.RUNNING)),
    ],
)
def test_invalid_transitions_raise_a_clear_error(action, state):
    expected = f"cannot {action.__name__} a rollout that is {state.phase.value}"
    with pytest.raises(InvalidTransition, match=expected):
        action(state, 0)


def test_state_round_trips_through_a_dict():
    state = decide(running(5), ERROR, 60, canary_samples=0).state
    assert RolloutState.from_dict(state.to_dict()) == state
    with pytest.raises(ValueError, match="phase"):
        RolloutState.from_dict({"phase": "exploded"})
