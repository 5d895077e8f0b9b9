"""The rollout page as an operator and a viewer use it, in a real Chromium, against the real app
with its controller running and a simulated fleet on real HTTP (rollout_server/simulator): the
page follows the rollout without a reload, shows the guards' verdicts and the automatic rollback
with its reason, and lets an operator (not a viewer) pause and resume after a confirmation."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
import requests

from rollout_server.simulator import Profile, ProfileTable, Simulation
from tests.browser import Page
from tests.rollout_server.conftest import auth, serving
from tests.rollout_server.test_console_sessions import form_csrf
from tests.rollout_server.test_simulator import config, seed, start_rollout

#: how long the page may take to show what the controller decided (it redraws every 5 s)
FOLLOW_MS = 90_000


@pytest.fixture
def app(tmp_path):
    """The server with its real controller, analysing every half second over 1 s windows."""
    from rollout_server.app import create_app

    app = create_app({"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": True,
                      "CONTROLLER_INTERVAL_SECONDS": 0.5, "ANALYSIS_WINDOW_SECONDS": 1})
    yield app
    app.extensions["edgeship.controller_stop"].set()


@pytest.fixture
def server(app) -> Iterator[str]:
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def sign_in(tab: Page, server: str, token: str, path: str) -> None:
    tab.page.goto(f"{server}/console/login?next={path}")
    tab.page.fill("#token", token)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url(f"**{path}")


def fleet_in_background(server: str, tokens: dict, rollout_id: int, profiles: ProfileTable,
                        **overrides) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        settings = config(server, tokens["enroll"], profiles=profiles, watch_rollout=rollout_id,
                          operator_token=tokens["admin"], **overrides)
        result["summary"] = Simulation(settings).run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_an_operator_watches_a_bad_canary_rolled_back_with_its_reason(app, server, tokens,
                                                                      browser_page) -> None:
    seed(app, "1", "2")
    rollout_id = start_rollout(app.test_client(), tokens["admin"], "2")
    tab = browser_page
    sign_in(tab, server, tokens["admin"], f"/console/rollouts/{rollout_id}")
    assert tab.page.inner_text("#phase") == "running"
    assert tab.page.is_visible("#actions button[data-action=pause]")
    profiles = ProfileTable({"1": Profile(error_rate=0.01, load_failure_rate=0.0),
                             "2": Profile(error_rate=0.05, load_failure_rate=0.0)})
    thread, _ = fleet_in_background(server, tokens, rollout_id, profiles)
    tab.page.locator("#phase.phase-rolled_back").wait_for(timeout=FOLLOW_MS)  # no reload: the script follows
    assert tab.page.inner_text("#phase") == "rolled back"
    thread.join(timeout=60)
    assert "error_rate" in tab.page.inner_text("#reason") or "error" in tab.page.inner_text("#reason")
    failing = tab.page.locator("#verdicts tr.outcome-fail").all_inner_texts()
    assert failing and any("error_rate" in row for row in failing), failing
    points = int(tab.page.get_attribute(".chart[data-series=error_rate]", "data-points") or 0)
    assert points >= 2 and tab.page.locator(".chart canvas").count() == 6  # the charts were drawn
    assert not tab.page.is_visible("#actions")  # nothing left to do
    tab.screenshot("console-rollout-rolled-back")
    assert tab.errors == []


def test_an_operator_pauses_and_resumes_after_confirming_and_a_viewer_cannot(app, server, tokens,
                                                                              browser_page, chromium) -> None:
    seed(app, "1", "2")
    rollout_id = start_rollout(app.test_client(), tokens["admin"], "2")
    path = f"/console/rollouts/{rollout_id}"
    made = requests.post(f"{server}/v1/tokens", headers=auth(tokens["admin"]), timeout=30,
                         json={"name": "watcher", "role": "viewer"})
    assert made.status_code == 201, made.text
    viewer = Page(chromium.new_context())
    try:
        sign_in(viewer, server, made.json()["token"], path)
        assert viewer.page.locator("#actions").count() == 0  # a viewer sees no action
        csrf = form_csrf(viewer.page.content())  # the viewer's own, valid token (its sign-out form)
        answer = viewer.page.request.post(f"{server}{path}/pause", form={"csrf": csrf, "confirm": "yes"})
        assert answer.status == 403  # and cannot post one either
        assert viewer.errors == []
    finally:
        viewer.context.close()

    tab = browser_page
    sign_in(tab, server, tokens["admin"], path)
    tab.page.click("#actions button[data-action=pause]")
    assert "Pause rollout" in tab.page.inner_text("#confirm h1")  # a confirmation first
    assert requests.get(f"{server}/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"]),
                        timeout=30).json()["phase"] == "running"
    tab.page.fill("#reason", "checking the dashboards")
    tab.page.click("#confirm-action")
    tab.page.wait_for_url(f"**{path}")
    assert tab.page.inner_text("#phase") == "paused"
    assert re.search(r"admin\s+rollout\.pause", tab.page.inner_text("#audit"))
    tab.page.click("#actions button[data-action=resume]")
    tab.page.click("#confirm-action")
    tab.page.wait_for_url(f"**{path}")
    assert tab.page.inner_text("#phase") == "running"
    status = requests.get(f"{server}/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"]), timeout=30)
    assert status.json()["phase"] == "running"
    tab.screenshot("console-rollout-running")
    assert tab.errors == []


def test_an_operator_watches_a_good_canary_advance_and_approves_its_gate(app, server, tokens,
                                                                          browser_page) -> None:
    seed(app, "1", "2")
    tab = browser_page
    sign_in(tab, server, tokens["admin"], "/console/rollouts")
    tab.page.click("#new-rollout-link")  # started from the form, as a person would
    tab.page.select_option("#release", "digits-cnn/2")
    tab.page.fill("#min_minutes", "0.05")
    tab.page.fill("#min_samples", "2000")
    tab.page.fill("#approve_before", "50")
    tab.page.check("input[name=dry_run][value=latency]")
    tab.page.click("#start-rollout")
    tab.page.wait_for_url("**/console/rollouts/*")
    rollout_id = int(tab.page.url.rsplit("/", 1)[1])
    path = f"/console/rollouts/{rollout_id}"
    same = Profile(error_rate=0.01, load_failure_rate=0.0)
    thread, _ = fleet_in_background(server, tokens, rollout_id, ProfileTable({"1": same, "2": same}),
                                    duration_seconds=90)
    tab.page.locator("#phase.phase-awaiting_approval").wait_for(timeout=FOLLOW_MS)  # the page follows
    assert tab.page.inner_text("#stage") == "1 / 3"
    tab.page.reload()  # the approval notice and the Approve button are drawn by the server
    assert "start stage 2 (50%)" in tab.page.inner_text("#approval")
    tab.screenshot("console-rollout-awaiting-approval")
    tab.page.click("#actions button[data-action=approve]")
    assert "Approve rollout" in tab.page.inner_text("#confirm h1")
    tab.page.click("#confirm-action")
    tab.page.wait_for_url(f"**{path}")
    assert tab.page.inner_text("#stage") == "2 / 3" and tab.page.inner_text("#phase") == "running"
    assert re.search(r"admin\s+rollout\.approve", tab.page.inner_text("#audit"))
    tab.page.locator("#phase.phase-promoted").wait_for(timeout=FOLLOW_MS)  # and on to the end
    thread.join(timeout=120)
    assert tab.page.locator("#verdicts .badge.dry-run").count() > 0  # the dry-run guard, marked
    assert tab.errors == []
