"""The fleet page's "what runs" and "failing" come from the snapshot the controller takes once per
analysis window (rollout_server/fleet_activity.py); without a fresh one the page sums the reports
itself, so it is never older than two windows."""

from __future__ import annotations

import datetime as dt
import re

from rollout_server.controller import step_all
from rollout_server.db import session_scope
from rollout_server.fleet_activity import take_if_due
from tests.rollout_server import test_window_points
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.test_console_sessions import sign_in
from tests.rollout_server.test_window_points import WINDOW, post

fleet = test_window_points.fleet  # the fixture
clock = FakeClock.fixture()
app = clocked_app()


def running_devices(client) -> dict[str, int]:
    """``{cohort: devices}`` of the fleet page's "what runs" table."""
    html = client.get("/console/fleet").text
    table = html[html.index('id="running"'):html.index('id="failing"')]
    rows = re.findall(r"<tr><td>digits-cnn</td><td>\d</td><td>[^<]*</td><td>(\w+)</td>\s*<td>[^<]*</td>"
                      r"<td class=\"num\">(\d+)</td>", table)
    return {cohort: int(n) for cohort, n in rows}


def test_the_page_shows_the_controllers_snapshot_until_the_next_window(app, client, tokens, clock, fleet):
    post(client, fleet["canary"][0], fleet["id"], "canary", clock.now - dt.timedelta(seconds=5), 10)
    step_all(app)
    post(client, fleet["stable"][0], fleet["id"], "stable", clock.now - dt.timedelta(seconds=4), 10,
         errors=2)
    sign_in(client, tokens["admin"])
    assert running_devices(client) == {"canary": 1}  # as the controller summed it this window
    assert "failing-total\"><span class=\"n\">0<" in client.get("/console/fleet").text
    clock.advance(WINDOW)
    step_all(app)
    assert running_devices(client) == {"canary": 1, "stable": 1}
    html = client.get("/console/fleet").text
    assert "failing-total\"><span class=\"n\">1<" in html and "As of" in html


def test_a_snapshot_is_taken_once_per_window_and_a_stale_one_is_not_shown(app, client, tokens, clock, fleet):
    recent = dt.timedelta(minutes=15)
    with session_scope(app) as session:
        assert take_if_due(session, clock.now, dt.timedelta(seconds=WINDOW), recent)
    every = dt.timedelta(seconds=WINDOW)
    with session_scope(app) as session:  # another replica's pass in the same window
        assert not take_if_due(session, clock.now + dt.timedelta(seconds=10), every, recent)
    post(client, fleet["canary"][0], fleet["id"], "canary", clock.now - dt.timedelta(seconds=5), 10)
    sign_in(client, tokens["admin"])
    assert running_devices(client) == {}  # the fresh snapshot, taken before the report
    clock.advance(2 * WINDOW + 1)  # no controller since: the page sums the reports itself
    assert running_devices(client) == {"canary": 1}
