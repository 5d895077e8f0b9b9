"""Webhooks (issue 21, notifications) against a real HTTP receiver: events of a rollout arrive
signed, in order, retried with backoff on the app's injected clock, given up after the limit;
Slack's shape; secrets stored sealed; bad requests are 4xx JSON; only admins manage webhooks;
concurrent dispatchers send each delivery once (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select

from rollout_server.db import session_scope
from rollout_server.models import WebhookDelivery, WebhookSubscription
from rollout_server.notifications.dispatcher import dispatch_due
from rollout_server.notifications.signing import InvalidSignature, verify
from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import BOTH_BACKENDS, auth, edgeship, seed_release, variant_entry
from tests.rollout_server.webhook_receiver import webhook_receiver

clock = FakeClock.fixture()
app = clocked_app()


@pytest.fixture
def receiver():
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def releases(app):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])


def add_webhook(client, admin: str, url: str, **extra) -> dict:
    response = client.post("/v1/webhooks", json={"url": url, **extra}, headers=auth(admin))
    assert response.status_code == 201, response.json
    return response.json


def start_rollout(client, admin: str) -> int:
    response = client.post("/v1/rollouts", headers=auth(admin), json={
        "model": "digits-cnn", "candidate_version": "2",
        "stages": [{"percent": 10, "min_duration_seconds": 60, "min_samples": 100},
                   {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]})
    assert response.status_code == 201, response.json
    return response.json["id"]


def act(client, admin: str, rollout_id: int, action: str, reason: str | None = None) -> None:
    response = client.post(f"/v1/rollouts/{rollout_id}/{action}", headers=auth(admin),
                           json={"reason": reason} if reason else None)
    assert response.status_code == 200, response.json


def deliveries(client, admin: str, hook_id: int) -> list[dict]:
    response = client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=auth(admin))
    assert response.status_code == 200, response.json
    return response.json["deliveries"][::-1]  # oldest first


def metric(client, line_start: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_rollout_events_arrive_signed_and_in_order(app, client, tokens, clock, receiver, releases):
    admin = tokens["admin"]
    hook = add_webhook(client, admin, receiver.url)
    assert hook["secret"].startswith("whsec_") and hook["kinds"] == ["phase_changed", "stage_advanced",
                                                                      "verdict_failed", "approval_requested"]
    rollout_id = start_rollout(client, admin)
    act(client, admin, rollout_id, "pause", "night")
    act(client, admin, rollout_id, "resume")
    act(client, admin, rollout_id, "abort")
    outcomes = dispatch_due(app)
    assert list(outcomes.values()) == ["delivered"] * 4
    received = receiver.wait_for(4)
    bodies = [r.json for r in received]
    assert [(b["kind"], b["from"], b["to"]) for b in bodies] == [
        ("phase_changed", "pending", "running"), ("phase_changed", "running", "paused"),
        ("phase_changed", "paused", "running"), ("phase_changed", "running", "aborted")]
    assert "night" in bodies[1]["reason"] and bodies[1]["actor"] == "admin"
    assert bodies[0]["rollout"] == {"id": rollout_id, "model": "digits-cnn", "candidate": "2",
                                    "baseline": "1", "phase": "running", "stage": 1, "stages": 2,
                                    "canary_percent": 10.0}
    for request in received:
        assert request.headers["Edgeship-Event"] == "phase_changed"
        assert request.headers["Edgeship-Timestamp"] == str(int(clock.now.timestamp()))
        assert verify(hook["secret"], request.headers, request.body, clock.now.timestamp()) == int(
            clock.now.timestamp())
        assert hook["secret"] not in request.path
    assert len({r.delivery for r in received}) == 4
    listed = deliveries(client, admin, hook["id"])
    assert [(d["status"], d["attempts"], d["last_status_code"], d["next_attempt_at"]) for d in listed] == [
        ("delivered", 1, 200, None)] * 4
    assert [str(d["id"]) for d in listed] == [r.delivery for r in received]
    assert dispatch_due(app) == {} and len(receiver.requests) == 4  # nothing is sent twice


def test_old_tampered_and_replayed_deliveries_are_detectable(app, client, tokens, clock, receiver, releases):
    hook = add_webhook(client, tokens["admin"], receiver.url)
    receiver.answer(500)
    start_rollout(client, tokens["admin"])
    dispatch_due(app)
    first_sent = clock.now.timestamp()
    clock.advance(600)
    dispatch_due(app)
    first, retry = receiver.wait_for(2)
    assert first.delivery == retry.delivery  # the same delivery again: a receiver drops the repeat by id
    assert first.body == retry.body
    assert first.headers["Edgeship-Timestamp"] != retry.headers["Edgeship-Timestamp"]
    secret = hook["secret"]
    verify(secret, first.headers, first.body, first_sent)
    verify(secret, retry.headers, retry.body, clock.now.timestamp())
    with pytest.raises(InvalidSignature, match="from now"):  # replayed 10 minutes later
        verify(secret, first.headers, first.body, clock.now.timestamp())
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify(secret, retry.headers, retry.body.replace(b"running", b"aborted"), clock.now.timestamp())
    forged = {**retry.headers, "Edgeship-Timestamp": str(int(clock.now.timestamp()) + 1)}
    with pytest.raises(InvalidSignature, match="no signature matches"):  # a new timestamp needs the secret
        verify(secret, forged, retry.body, clock.now.timestamp())
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify("whsec_another-secret-entirely", retry.headers, retry.body, clock.now.timestamp())


@BOTH_BACKENDS
def test_failures_are_retried_with_backoff_and_later_events_wait_their_turn(
        app, client, tokens, clock, receiver, releases):
    admin = tokens["admin"]
    hook = add_webhook(client, admin, receiver.url)
    receiver.answer(500, 503)
    rollout_id = start_rollout(client, admin)
    act(client, admin, rollout_id, "pause")
    assert dispatch_due(app) == {int(deliveries(client, admin, hook["id"])[0]["id"]): "retried"}
    first, second = deliveries(client, admin, hook["id"])
    assert (first["status"], first["attempts"], first["last_status_code"], first["last_error"]) == (
        "pending", 1, 500, "HTTP 500")
    wait = (dt.datetime.fromisoformat(first["next_attempt_at"]) - clock.now).total_seconds()
    assert 15 <= wait <= 30  # base 30 s with a jitter in [0.5, 1]
    assert (second["status"], second["attempts"]) == ("pending", 0)  # not sent before the first
    clock.advance(14)
    assert dispatch_due(app) == {} and len(receiver.requests) == 1
    clock.advance(17)
    dispatch_due(app)
    first = deliveries(client, admin, hook["id"])[0]
    assert (first["attempts"], first["last_status_code"]) == (2, 503)
    wait = (dt.datetime.fromisoformat(first["next_attempt_at"]) - clock.now).total_seconds()
    assert 30 <= wait <= 60
    clock.advance(61)
    assert list(dispatch_due(app).values()) == ["delivered", "delivered"]
    received = receiver.wait_for(4)
    assert [r.status for r in received] == [500, 503, 200, 200]
    assert [r.json["to"] for r in received] == ["running", "running", "running", "paused"]
    assert metric(client, 'edgeship_webhook_deliveries_total{outcome="retried"}') == 2
    assert metric(client, 'edgeship_webhook_deliveries_total{outcome="delivered"}') == 2


@BOTH_BACKENDS
def test_a_delivery_is_given_up_after_the_last_attempt_and_the_next_one_goes(
        app, client, tokens, clock, receiver, releases):
    app.config["WEBHOOK_MAX_ATTEMPTS"] = 2
    admin = tokens["admin"]
    hook = add_webhook(client, admin, receiver.url)
    receiver.answer(500, 500)
    rollout_id = start_rollout(client, admin)
    act(client, admin, rollout_id, "pause")
    dispatch_due(app)
    assert metric(client, 'edgeship_webhook_deliveries_pending{state="retrying"}') == 1
    assert metric(client, 'edgeship_webhook_deliveries_pending{state="queued"}') == 1
    listed = client.get("/v1/webhooks", headers=auth(admin)).json["webhooks"]
    assert [(h["id"], h["pending"], h["retrying"]) for h in listed] == [(hook["id"], 2, 1)]
    clock.advance(3600)
    assert list(dispatch_due(app).values()) == ["gave_up", "delivered"]
    first, second = deliveries(client, admin, hook["id"])
    assert (first["status"], first["attempts"], first["next_attempt_at"]) == ("failed", 2, None)
    assert (second["status"], second["attempts"]) == ("delivered", 1)
    assert metric(client, 'edgeship_webhook_deliveries_total{outcome="gave_up"}') == 1
    assert metric(client, 'edgeship_webhook_deliveries_pending{state="retrying"}') == 0


def test_a_slack_webhook_gets_one_readable_line(app, client, tokens, receiver, releases):
    admin = tokens["admin"]
    add_webhook(client, admin, receiver.url, format="slack", kinds=["phase_changed"], model="digits-cnn")
    add_webhook(client, admin, receiver.url, format="slack", model="another-model")  # filtered out
    rollout_id = start_rollout(client, admin)
    act(client, admin, rollout_id, "pause", "maintenance window")
    dispatch_due(app)
    received = receiver.wait_for(2)
    assert len(received) == 2
    assert [set(r.json) for r in received] == [{"text"}, {"text"}]
    text = received[1].json["text"]
    assert text == (f"edgeship rollout #{rollout_id} of digits-cnn 2 (vs 1): running → paused: "
                    "pause by admin: maintenance window")


@pytest.mark.parametrize("body, fragment", [
    ({"url": "ftp://example.com/x"}, "http:// or https://"),
    ({"url": "http:///nohost"}, "no host"),
    ({"url": "https://user:pw@example.com/"}, "credentials"),
    ({"url": "https://example.com/a b"}, "spaces"),
    ({"url": "https://example.com:99999/"}, "malformed"),
    ({"url": 5}, "'url' must be a string"),
    ({}, "'url' is required"),
    ({"url": "https://example.com/", "kinds": ["everything"]}, "'kinds'"),
    ({"url": "https://example.com/", "kinds": []}, "'kinds'"),
    ({"url": "https://example.com/", "format": "teams"}, "'format'"),
    ({"url": "https://example.com/", "secret": "short"}, "'secret'"),
    ({"url": "https://example.com/", "model": "Not A Name"}, "'model'"),
])
def test_bad_webhooks_are_refused_with_a_reason(client, tokens, body, fragment):
    response = client.post("/v1/webhooks", json=body, headers=auth(tokens["admin"]))
    assert response.status_code == 400 and response.json["error"] == "bad_request"
    assert fragment in response.json["detail"]


def test_only_allowed_hosts_and_only_admins(app, client, tokens, receiver):
    admin = tokens["admin"]
    operator = client.post("/v1/tokens", json={"name": "ops", "role": "operator"}, headers=auth(admin)).json
    hook = add_webhook(client, admin, receiver.url)
    for method, path in (("post", "/v1/webhooks"), ("get", "/v1/webhooks"),
                         ("delete", f"/v1/webhooks/{hook['id']}"),
                         ("get", f"/v1/webhooks/{hook['id']}/deliveries"),
                         ("post", f"/v1/webhooks/{hook['id']}/test")):
        response = getattr(client, method)(path, json={"url": receiver.url} if method == "post" else None,
                                           headers=auth(operator["token"]))
        assert (response.status_code, response.json["error"]) == (403, "forbidden"), path
    assert client.get("/v1/webhooks").status_code == 401
    assert client.delete("/v1/webhooks/999", headers=auth(admin)).status_code == 404
    assert client.get(f"/v1/webhooks/{hook['id']}/deliveries?limit=0", headers=auth(admin)).status_code == 400
    app.config["WEBHOOK_ALLOWED_HOSTS"] = [".example.com"]
    refused = client.post("/v1/webhooks", json={"url": receiver.url}, headers=auth(admin))
    assert refused.status_code == 400 and "WEBHOOK_ALLOWED_HOSTS" in refused.json["detail"]
    assert add_webhook(client, admin, "https://hooks.example.com/x")["url"] == "https://hooks.example.com/x"
    # a webhook added before the host was disallowed is not sent to either
    client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth(admin))
    dispatch_due(app)
    assert receiver.requests == []
    assert "WEBHOOK_ALLOWED_HOSTS" in deliveries(client, admin, hook["id"])[0]["last_error"]


def test_secrets_are_stored_sealed_and_shown_once(app, client, tokens, receiver, tmp_path):
    admin = tokens["admin"]
    hook = add_webhook(client, admin, receiver.url, secret="a-secret-of-my-own-choosing")
    assert hook["secret"] == "a-secret-of-my-own-choosing"
    assert "secret" not in client.get("/v1/webhooks", headers=auth(admin)).json["webhooks"][0]
    with session_scope(app) as session:
        sealed = session.scalars(select(WebhookSubscription.secret_sealed)).one()
    assert "a-secret-of-my-own-choosing" not in sealed
    audit = client.get("/v1/audit", headers=auth(admin)).json["entries"]
    assert any(e["action"] == "webhook.create" and e["detail"]["host"] == "127.0.0.1" for e in audit)
    assert all(receiver.url not in str(e["detail"]) for e in audit)
    # with another key (a replica given a different WEBHOOK_SECRETS_KEY) the secret cannot be opened
    (tmp_path / "server" / "webhook-secrets.key").unlink()
    app.extensions.pop("edgeship.webhook_key")
    client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth(admin))
    dispatch_due(app)
    assert receiver.requests == []
    assert "another key" in deliveries(client, admin, hook["id"])[0]["last_error"]


def test_a_test_event_goes_to_its_webhook_only_and_removal_drops_pending_deliveries(
        app, client, tokens, receiver, releases):
    admin = tokens["admin"]
    first = add_webhook(client, admin, receiver.url)
    second = add_webhook(client, admin, receiver.url + "/second")
    queued = client.post(f"/v1/webhooks/{first['id']}/test", headers=auth(admin))
    assert queued.status_code == 202
    start_rollout(client, admin)
    removed = client.delete(f"/v1/webhooks/{second['id']}", headers=auth(admin))
    assert removed.json == {"id": second["id"], "removed": True}
    dispatch_due(app)
    received = receiver.wait_for(2)
    assert [(r.path, r.json["kind"]) for r in received] == [("/hook", "test"), ("/hook", "phase_changed")]
    assert received[0].json["actor"] == "admin"
    assert client.get(f"/v1/webhooks/{second['id']}/deliveries", headers=auth(admin)).status_code == 404
    with session_scope(app) as session:
        assert {d.subscription_id for d in session.scalars(select(WebhookDelivery))} == {first["id"]}


@BOTH_BACKENDS
def test_concurrent_dispatchers_send_each_delivery_once_and_in_order(app, client, tokens, receiver,
                                                                     releases):
    admin = tokens["admin"]
    hooks = [add_webhook(client, admin, f"{receiver.url}/{i}") for i in range(2)]
    rollout_id = start_rollout(client, admin)
    for _ in range(3):
        act(client, admin, rollout_id, "pause")
        act(client, admin, rollout_id, "resume")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(5):
                dispatch_due(app)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    received = receiver.wait_for(14)
    assert len(received) == 14
    for i, hook in enumerate(hooks):
        mine = [r for r in received if r.path == f"/hook/{i}"]
        ids = [int(r.delivery) for r in mine]
        assert ids == sorted(set(ids)) and len(ids) == 7  # each once, oldest first
        assert [d["status"] for d in deliveries(client, admin, hook["id"])] == ["delivered"] * 7
        assert [r.json["to"] for r in mine] == ["running", *["paused", "running"] * 3]


def test_the_cli_adds_lists_tests_shows_and_removes_webhooks(app, tokens, receiver, live_server):
    admin = tokens["admin"]
    added = edgeship("webhooks", "add", receiver.url, "--format", "slack", "--kind", "phase_changed",
                     "--server", live_server, token=admin)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and "added webhook #1 (slack; phase_changed)" in added.stderr
    listed = edgeship("webhooks", "list", "--server", live_server, token=admin)
    assert listed.returncode == 0 and receiver.url in listed.stdout
    tested = edgeship("webhooks", "test", "1", "--server", live_server, token=admin)
    assert tested.returncode == 0 and "test event queued" in tested.stdout
    dispatch_due(app)
    (request,) = receiver.wait_for(1)
    verify(secret, request.headers, request.body, int(request.headers["Edgeship-Timestamp"]))
    shown = edgeship("webhooks", "deliveries", "1", "--server", live_server, token=admin)
    assert shown.returncode == 0 and "delivered" in shown.stdout and " 200 " in shown.stdout
    bad = edgeship("webhooks", "add", "ftp://example.com", "--server", live_server, token=admin)
    assert bad.returncode != 0 and "http:// or https://" in bad.stderr
    removed = edgeship("webhooks", "remove", "1", "--server", live_server, token=admin)
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert edgeship("webhooks", "remove", "1", "--server", live_server, token=admin).returncode != 0


def test_an_approval_request_reaches_the_webhooks_that_want_it(app, client, tokens, receiver, releases):
    """The approval gates will call ``events.approval_requested`` in the transaction that makes the
    rollout wait; the event goes out like the others."""
    from rollout_server.models import Rollout
    from rollout_server.notifications.events import approval_requested

    admin = tokens["admin"]
    add_webhook(client, admin, receiver.url, kinds=["approval_requested"])
    add_webhook(client, admin, receiver.url + "/slack", format="slack", kinds=["approval_requested"])
    rollout_id = start_rollout(client, admin)
    with session_scope(app) as session:
        approval_requested(session, session.get(Rollout, rollout_id), 1, "stage 2 needs an approval",
                           dt.datetime.now(dt.timezone.utc))
    dispatch_due(app)
    edgeship_body, slack = receiver.wait_for(2)
    assert edgeship_body.headers["Edgeship-Event"] == "approval_requested"
    body = edgeship_body.json
    assert (body["waiting_stage"], body["reason"]) == (2, "stage 2 needs an approval")
    assert slack.json == {"text": f"edgeship rollout #{rollout_id} of digits-cnn 2 (vs 1): waiting for "
                                  "approval before stage 2: stage 2 needs an approval"}


def test_the_retry_schedule_doubles_with_jitter_and_gives_up():
    import random

    from rollout_server.notifications.schedule import MAX_DELAY_SECONDS, gives_up, retry_delay_seconds

    rng = random.Random(7)
    for attempts in range(1, 12):
        full = min(30 * 2 ** (attempts - 1), MAX_DELAY_SECONDS)
        delays = [retry_delay_seconds(attempts, 30, rng) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 4  # jittered, not one fixed wait
    assert [gives_up(n, 8) for n in (1, 7, 8, 9)] == [False, False, True, True]
    with pytest.raises(ValueError, match="at least 1"):
        retry_delay_seconds(0)


def test_replicas_given_the_same_key_send_each_others_webhooks(tmp_path, receiver):
    import base64
    import os

    from rollout_server.app import create_app

    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    shared = {"DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}", "CONTROLLER_ENABLED": False,
              "WEBHOOK_SECRETS_KEY": key}
    first = create_app({"DATA_DIR": str(tmp_path / "first"), **shared})
    second = create_app({"DATA_DIR": str(tmp_path / "second"), **shared})
    admin = dict(line.split("=", 1) for line in (tmp_path / "first" / "first-start-tokens.txt")
                 .read_text().split())["EDGESHIP_ADMIN_TOKEN"]
    hook = add_webhook(first.test_client(), admin, receiver.url)
    assert first.test_client().post(f"/v1/webhooks/{hook['id']}/test", headers=auth(admin)).status_code == 202
    assert list(dispatch_due(second).values()) == ["delivered"]
    (request,) = receiver.wait_for(1)
    verify(hook["secret"], request.headers, request.body, int(request.headers["Edgeship-Timestamp"]))
    assert not list(tmp_path.glob("*/webhook-secrets.key"))  # the configured key, no key file
