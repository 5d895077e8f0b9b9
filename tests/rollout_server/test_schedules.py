"""Schedules: a start time and allowed windows. Pure parsing and window arithmetic, decide's hold,
and the API and controller on a real app whose clock the test moves (no sleeps)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select

from rollout_server.analysis import Action, Outcome, Phase, RolloutState, Stage, Verdict, decide, start
from rollout_server.analysis.schedule import Schedule
from rollout_server.controller import step_all
from rollout_server.db import session_scope
from rollout_server.models import Event
from tests.rollout_server import test_rollouts
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import auth
from tests.rollout_server.test_rollouts import T0, assignments, create, send_window, start_stage_at

releases, fleet = test_rollouts.releases, test_rollouts.fleet  # the rollout tests' fixtures
clock = FakeClock.fixture()
app = clocked_app()

UTC = dt.timezone.utc
OFFICE = {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "09:00", "to": "17:00", "tz": "Europe/Berlin"}
#: T0 is Monday 2026-11-23 12:00 UTC, 13:00 in Berlin: inside OFFICE. Five hours later it is closed.
EVENING = T0 + dt.timedelta(hours=5)
NEXT_MORNING = dt.datetime(2026, 11, 24, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
GOOD = {"stable": 0.01, "canary": 0.01}
BAD = {"stable": 0.01, "canary": 0.08}


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- windows and schedules, pure ---------------------------------------------------------------


def test_a_weekday_window_in_a_time_zone_opens_and_says_when_it_next_opens():
    office = Schedule.from_dict({"windows": [OFFICE]})
    assert office.is_open(T0) and office.hold_reason(T0) is None
    assert not office.is_open(EVENING)
    assert office.hold_reason(EVENING) == ("outside the allowed windows; next opens at "
                                           "2026-11-24T09:00:00+01:00")
    friday_night = at(2026, 11, 27, 18)
    assert office.next_opening(friday_night).isoformat() == "2026-11-30T09:00:00+01:00"  # after the weekend
    assert not office.is_open(at(2026, 11, 28, 12))  # Saturday
    assert office.is_open(at(2026, 11, 23, 8)) and not office.is_open(at(2026, 11, 23, 7, 59))
    assert not office.is_open(at(2026, 11, 23, 16))  # 17:00 in Berlin: closed
    # summer time: 09:00 in Berlin is 07:00 UTC
    assert office.is_open(at(2026, 7, 6, 7, 30)) and not office.is_open(at(2026, 7, 6, 6, 30))


def test_an_overnight_window_closes_the_next_day_and_24_00_ends_a_day():
    night = Schedule.from_dict({"windows": [{"days": ["sat"], "from": "22:00", "to": "06:00"}]})
    assert night.is_open(at(2026, 11, 28, 23)) and night.is_open(at(2026, 11, 29, 5, 59))
    assert not night.is_open(at(2026, 11, 29, 6)) and not night.is_open(at(2026, 11, 27, 23))
    whole = Schedule.from_dict({"windows": [{"days": ["sun"], "from": "00:00", "to": "24:00", "tz": "UTC"}]})
    assert whole.is_open(at(2026, 11, 29, 23, 59)) and not whole.is_open(at(2026, 11, 30, 0))
    assert Schedule().is_open(T0) and Schedule().next_opening(T0) is None


def test_start_at_holds_until_then_and_round_trips():
    schedule = Schedule.from_dict({"start_at": "2026-11-23T14:00:00+01:00", "windows": [OFFICE]})
    assert schedule.hold_reason(T0) == "scheduled to start at 2026-11-23T13:00:00+00:00"
    assert schedule.hold_reason(T0 + dt.timedelta(hours=1)) is None
    assert Schedule.from_dict(schedule.to_dict()) == schedule
    assert Schedule.from_dict({"start_at": "2026-11-23T13:00:00"}).start_at == T0 + dt.timedelta(hours=1)


@pytest.mark.parametrize("data, fragment", [
    ({"windows": [{**OFFICE, "tz": "Mars/Olympus"}]}, "windows[0]: tz: unknown time zone"),
    ({"windows": [{**OFFICE, "from": "9am"}]}, "from must be a time HH:MM"),
    ({"windows": [{**OFFICE, "to": "24:30"}]}, "to must be a time from 00:00 to 24:00"),
    ({"windows": [{**OFFICE, "to": "09:00"}]}, "must differ"),
    ({"windows": [{**OFFICE, "days": ["funday"]}]}, "days must be"),
    ({"windows": [{**OFFICE, "hours": 3}]}, "unknown field(s) hours"),
    ({"windows": [{**OFFICE, "tz": "Europe"}]}, "unknown time zone 'Europe'"),  # a folder of zones
    ({"windows": [{**OFFICE, "tz": "a" * 5000}]}, "unknown time zone"),  # a file name too long
    ({"windows": [{**OFFICE, "tz": "../../etc/passwd"}]}, "unknown time zone"),
    ({"windows": {"from": "09:00"}}, "windows must be a list"),
    ({"windows": [OFFICE] * 33}, "at most 32 windows"),
    ({"start_at": "9999-12-31T23:59:00-23:00"}, "start_at must be an ISO 8601 time"),
    ({"start_at": "tomorrow"}, "start_at must be an ISO 8601 time"),
    ({"start_at": 1700000000}, "start_at must be an ISO 8601 time"),
])
def test_bad_schedules_name_the_field(data, fragment):
    with pytest.raises(ValueError) as raised:
        Schedule.from_dict(data)
    assert fragment in str(raised.value)


STAGES = (Stage(10, 600, 1000), Stage(50, 600, 1000), Stage(100, 0, 0))
PASS = (Verdict(Outcome.PASS, "error_rate: fine", guard="error_rate"),)
FAIL = (Verdict(Outcome.FAIL, "error_rate: canary 2% vs 1%", guard="error_rate"),)
CLOSED = "outside the allowed windows; next opens at 2026-11-24T09:00:00+01:00"


@pytest.mark.parametrize("gates", [(), (50.0,)])
def test_a_hold_stops_advance_promotion_and_approval_requests_but_not_a_rollback(gates):
    state = start(RolloutState(stages=STAGES, approve_before=gates), 0.0).state
    held = decide(state, PASS, 600.0, canary_samples=5000, hold=CLOSED)
    assert held.action is Action.HOLD and held.state.phase is Phase.RUNNING and held.state.stage_index == 0
    assert held.reason.endswith(f"holding: {CLOSED}")
    moved = decide(held.state, PASS, 660.0, canary_samples=5000)
    assert moved.action is (Action.AWAIT_APPROVAL if gates else Action.ADVANCE)
    rolled = decide(state, FAIL, 600.0, canary_samples=5000, hold=CLOSED)
    assert rolled.action is Action.ROLLBACK and rolled.state.phase is Phase.ROLLED_BACK


# --- API and controller on the app's clock ------------------------------------------------------


def status_of(client, tokens, rollout_id: int) -> dict:
    return client.get(f"/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"])).json


def window(app, client, fleet, clock, now: dt.datetime, rates: dict, seed: int) -> None:
    clock.now = now
    send_window(client, fleet, now, rates, seed=seed)
    step_all(app)  # at the app's clock


def test_a_rollout_with_start_at_stays_pending_and_the_controller_starts_it(app, clock, client, tokens,
                                                                         fleet):
    clock.now = T0
    created = create(client, tokens, start_at=(T0 + dt.timedelta(hours=1)).isoformat())
    assert created.status_code == 201, created.json
    rollout_id = created.json["id"]
    assert (created.json["phase"], created.json["canary_percent"]) == ("pending", 0)
    assert created.json["hold_reason"] == "scheduled to start at 2026-11-23T13:00:00+00:00"
    assert created.json["spec"]["schedule"]["start_at"] == "2026-11-23T13:00:00+00:00"
    assert {a["version"] for a in assignments(client, fleet).values()} == {"1"}
    second = create(client, tokens)
    assert second.status_code == 409 and "scheduled" in second.json["detail"]
    step_all(app, T0 + dt.timedelta(minutes=59))
    assert status_of(client, tokens, rollout_id)["phase"] == "pending"
    clock.now = T0 + dt.timedelta(hours=1)
    step_all(app)
    status = status_of(client, tokens, rollout_id)
    assert (status["phase"], status["canary_percent"], status["hold_reason"]) == ("running", 10, None)
    assert status["state"]["stage_started_at"] == clock.now.timestamp()
    assert "2" in {a["version"] for a in assignments(client, fleet).values()}
    with session_scope(app) as session:
        started = [e.payload for e in session.scalars(select(Event).where(Event.rollout_id == rollout_id))]
    assert [(e["from"], e["to"], e["actor"]) for e in started] == [("pending", "running", "controller")]


@pytest.mark.parametrize("app", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_controllers_start_a_due_rollout_once(app, clock, client, tokens, releases):
    clock.now = T0
    rollout_id = create(client, tokens, start_at=(T0 + dt.timedelta(minutes=5)).isoformat()).json["id"]
    due = T0 + dt.timedelta(minutes=6)
    threads = [threading.Thread(target=step_all, args=(app, due)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert status_of(client, tokens, rollout_id)["phase"] == "running"
    with session_scope(app) as session:
        kinds = [e.kind for e in session.scalars(select(Event).where(Event.rollout_id == rollout_id))]
    assert kinds == ["phase_changed"]
    audit = client.get("/v1/audit", headers=auth(tokens["admin"])).json["entries"]
    assert [e["actor"] for e in audit if e["action"] == "rollout.start"] == ["controller"]


def test_a_pending_rollout_can_be_aborted_and_never_starts(app, clock, client, tokens, releases):
    clock.now = T0
    rollout_id = create(client, tokens, start_at=(T0 + dt.timedelta(hours=1)).isoformat()).json["id"]
    aborted = client.post(f"/v1/rollouts/{rollout_id}/abort", headers=auth(tokens["admin"])).json
    assert aborted["phase"] == "aborted" and aborted["hold_reason"] is None
    step_all(app, T0 + dt.timedelta(hours=2))
    assert status_of(client, tokens, rollout_id)["phase"] == "aborted"


def test_created_outside_its_windows_it_waits_for_the_next_one(app, clock, client, tokens, releases):
    clock.now = EVENING
    created = create(client, tokens, windows=[OFFICE]).json
    assert created["phase"] == "pending" and created["hold_reason"] == CLOSED
    step_all(app)
    assert status_of(client, tokens, created["id"])["phase"] == "pending"
    held = 'edgeship_rollout_schedule_held{model="digits-cnn"}'  # the stalled alert leaves it alone
    assert f"{held} 1.0" in client.get("/metrics", headers=auth(tokens["admin"])).text
    clock.now = NEXT_MORNING
    step_all(app)
    assert status_of(client, tokens, created["id"])["phase"] == "running"
    assert f"{held} 0.0" in client.get("/metrics", headers=auth(tokens["admin"])).text


def test_outside_the_windows_a_passing_stage_holds_and_advances_when_one_opens(app, clock, client, tokens,
                                                                              fleet):
    clock.now = T0
    rollout_id = create(client, tokens, windows=[OFFICE]).json["id"]
    start_stage_at(app, rollout_id, EVENING - dt.timedelta(seconds=60))
    passed = False
    for k in range(10):
        window(app, client, fleet, clock, EVENING + dt.timedelta(seconds=60 * k), GOOD, seed=k)
        status = status_of(client, tokens, rollout_id)
        assert (status["phase"], status["canary_percent"]) == ("running", 10)
        assert status["hold_reason"] == CLOSED
        latest = [v for v in status["verdicts"] if v["window_end"] == status["verdicts"][0]["window_end"]]
        if all(v["outcome"] == "pass" for v in latest):  # it would have advanced inside a window
            passed = True
            assert {v["decision"] for v in latest} == {"hold"}
            break
    assert passed, status["verdicts"][:4]
    window(app, client, fleet, clock, NEXT_MORNING + dt.timedelta(seconds=60), GOOD, seed=50)
    status = status_of(client, tokens, rollout_id)
    assert (status["phase"], status["canary_percent"], status["hold_reason"]) == ("running", 50, None)


def test_outside_the_windows_a_failing_guard_still_rolls_back(app, clock, client, tokens, fleet):
    clock.now = T0
    rollout_id = create(client, tokens, windows=[OFFICE]).json["id"]
    start_stage_at(app, rollout_id, EVENING - dt.timedelta(seconds=60))
    for k in range(8):
        window(app, client, fleet, clock, EVENING + dt.timedelta(seconds=60 * k), BAD, seed=k)
        status = status_of(client, tokens, rollout_id)
        if status["phase"] != "running":
            break
    assert status["phase"] == "rolled_back" and "error" in status["reason"].lower()
    assert {a["version"] for a in assignments(client, fleet).values()} == {"1"}


@pytest.mark.parametrize("patch, fragment", [
    ({"windows": [{**OFFICE, "tz": "Mars/Olympus"}]}, "windows[0]: tz"),
    ({"start_at": "next tuesday"}, "start_at"),
    ({"windows": "office hours"}, "windows must be a list"),
])
def test_bad_schedules_are_400_with_the_reason(client, tokens, releases, patch, fragment):
    response = create(client, tokens, **patch)
    assert response.status_code == 400 and fragment in response.json["detail"], response.json
