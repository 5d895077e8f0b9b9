"""The console's pages show what the database holds (docs/console.md): the fleet's counts, the
models, and a release's variants with size ratios against the fp32 file of the same format."""

from __future__ import annotations

import re

from tests.rollout_server.clocked import FakeClock, clocked_app
from tests.rollout_server.conftest import register, seed_release, variant_entry
from tests.rollout_server.test_console_sessions import sign_in

clock = FakeClock.fixture()
app = clocked_app()


def test_the_fleet_page_counts_devices_by_class_runtime_and_silence(client, tokens, clock) -> None:
    register(client, tokens["enroll"], "rpi4", {"litert": "2.3.0"})
    register(client, tokens["enroll"], "rpi4", {"onnxruntime": "1.20.1"})
    register(client, tokens["enroll"], "android", {"onnxruntime": "1.20.1"})
    sign_in(client, tokens["admin"])
    html = client.get("/console/fleet").text
    by_class = html[html.index('id="by-class"'):html.index('id="by-runtime"')]
    assert re.search(r"<td>rpi4</td><td class=\"num\">2</td>", by_class)
    assert re.search(r"<td>android</td><td class=\"num\">1</td>", by_class)
    runtimes = html[html.index('id="by-runtime"'):html.index('id="running"')]
    assert re.search(r"<td>onnxruntime</td><td class=\"num\">2</td>", runtimes)
    assert re.search(r'id="silent-total"><span class="n">3</span>', html)  # registered, never polled
    assert re.search(r'id="admission-accepted"><span class="n">3</span>', html)


def test_a_silent_device_stops_being_silent_when_it_polls(client, tokens, clock) -> None:
    device, credential = register(client, tokens["enroll"], "rpi5", {"onnxruntime": "1.20.1"})
    seed_release(client.application, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)],
                 stable=True)
    polled = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn",
                        headers={"Authorization": f"Bearer {credential}"})
    assert polled.status_code == 200, polled.json
    sign_in(client, tokens["admin"])
    html = client.get("/console/fleet").text
    assert re.search(r'id="silent-total"><span class="n">0</span>', html)
    clock.advance(11 * 60)
    html = client.get("/console/fleet").text
    assert re.search(r'id="silent-total"><span class="n">1</span>', html) and device in html


def test_the_release_page_compares_each_variant_with_the_fp32_file_of_its_format(client, app, tokens) -> None:
    fp32 = {**variant_entry("onnx-fp32", "onnxruntime", 2.0, "a" * 64, size=4000), "precision": "fp32"}
    seed_release(app, "7", [fp32,
                            variant_entry("onnx-int8", "onnxruntime", 1.0, "b" * 64, size=1000),
                            variant_entry("tflite-int8", "litert", 0.5, "c" * 64, size=3000)])
    sign_in(client, tokens["admin"])
    assert "digits-cnn" in client.get("/console/models").text
    html = client.get("/console/models/digits-cnn/7").text
    rows = re.findall(r"<tr><td>([a-z0-9-]+)(?:<br>.*?)?</td>(.*?)</tr>", html, re.S)
    ratios = {name: re.findall(r'data-col="size-ratio">([^<]*)</td>', cells)[0] for name, cells in rows}
    assert ratios["onnx-int8"] == "0.25" and ratios["onnx-fp32"] == "1.00"
    assert ratios["tflite-int8"] == "—"  # no TFLite fp32 in this release: no ratio, not one across formats
    assert client.get("/console/models/digits-cnn/8").status_code == 404
    assert client.get("/console/models/nope").status_code == 404


def test_rollout_pages_answer_for_missing_rollouts_and_refuse_actions_that_do_not_apply(client, app, tokens):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    created = client.post("/v1/rollouts", headers={"Authorization": f"Bearer {tokens['admin']}"},
                          json={"model": "digits-cnn", "candidate_version": "2"})
    assert created.status_code == 201, created.json
    rollout_id = created.json["id"]
    sign_in(client, tokens["admin"])
    assert client.get("/console/rollouts/999").status_code == 404
    assert client.get("/console/rollouts/999/live").json["error"] == "not_found"
    page = client.get(f"/console/rollouts/{rollout_id}")
    assert page.status_code == 200 and 'data-action="pause"' in page.text
    assert 'data-action="resume"' not in page.text  # only what the phase allows
    live = client.get(f"/console/rollouts/{rollout_id}/live").json
    assert live["summary"]["phase"] == "running" and set(live["series"]) >= {"t", "canary", "stable"}
    assert set(live["actions"]) == {"pause", "promote", "abort"}
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    refused = client.post(f"/console/rollouts/{rollout_id}/resume", data={"csrf": csrf, "confirm": "yes"})
    assert refused.status_code == 409 and "resume" in refused.text  # not paused: says why, changes nothing
    forged = client.post(f"/console/rollouts/{rollout_id}/abort", data={"csrf": "x" * 40, "confirm": "yes"})
    assert forged.status_code == 400
    asked = client.post(f"/console/rollouts/{rollout_id}/abort", data={"csrf": csrf})
    assert asked.status_code == 200 and 'id="confirm"' in asked.text  # a confirmation, nothing done yet
    assert client.get(f"/console/rollouts/{rollout_id}/live").json["summary"]["phase"] == "running"
    done = client.post(f"/console/rollouts/{rollout_id}/abort", data={"csrf": csrf, "confirm": "yes",
                                                                       "reason": "wrong build"})
    assert done.status_code == 303
    assert client.get(f"/console/rollouts/{rollout_id}/live").json["summary"]["phase"] == "aborted"
    assert "wrong build" in client.get(f"/console/rollouts/{rollout_id}").text


def test_an_operator_accepts_a_pending_device_after_confirming(tmp_path, clock) -> None:
    from rollout_server.app import create_app
    from tests.rollout_server.conftest import FIRST_START_FILE

    app = create_app({"DATA_DIR": str(tmp_path / "s"), "CONTROLLER_ENABLED": False, "CLOCK": clock,
                      "DEVICE_ADMISSION": "manual"})
    client = app.test_client()
    pairs = dict(line.split("=", 1) for line in (tmp_path / "s" / FIRST_START_FILE).read_text().split())
    admin, enroll = pairs["EDGESHIP_ADMIN_TOKEN"], pairs["EDGESHIP_ENROLL_TOKEN"]
    device, _ = register(client, enroll, "android", {"onnxruntime": "1.20.1"})
    sign_in(client, admin)
    fleet = client.get("/console/fleet").text
    assert device in fleet[fleet.index('id="pending"'):] and 'data-action="accept"' in fleet
    csrf = re.search(r'name="csrf" value="([^"]+)"', fleet).group(1)
    asked = client.post(f"/console/devices/{device}/accept", data={"csrf": csrf})
    assert asked.status_code == 200 and 'id="confirm"' in asked.text and "now pending" in asked.text
    done = client.post(f"/console/devices/{device}/accept", data={"csrf": csrf, "confirm": "yes"})
    assert done.status_code == 303
    headers = {"Authorization": f"Bearer {admin}"}
    listed = client.get("/v1/devices?state=active", headers=headers).json["devices"]
    assert [d["device_id"] for d in listed] == [device]
    entries = client.get("/v1/audit", headers=headers).json["entries"]
    assert any(e["action"] == "device.accept" and e["actor"] == "admin" for e in entries), entries
    again = client.post(f"/console/devices/{device}/reject", data={"csrf": csrf, "confirm": "yes"})
    assert again.status_code == 409 and "revoke it instead" in again.text  # the API's rule, in words


def test_an_admin_sees_a_failing_webhook_and_a_viewer_does_not(client, app, tokens) -> None:
    from rollout_server.notifications.dispatcher import dispatch_due

    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    made = client.post("/v1/webhooks", headers=admin, json={"url": "http://127.0.0.1:9/hook"})  # no listener
    assert made.status_code == 201, made.json
    assert client.post(f"/v1/webhooks/{made.json['id']}/test", headers=admin).status_code == 202
    dispatch_due(app)
    sign_in(client, tokens["admin"])
    html = client.get("/console/webhooks").text
    card = html[html.index(f'id="webhook-{made.json["id"]}"'):]
    assert re.search(r'class="n-retrying warn">1<', card) and "delivery-pending" in card
    assert "http://127.0.0.1:9/hook" in card and "whsec_" not in html  # never the secret
    viewer = client.post("/v1/tokens", headers=admin, json={"name": "v", "role": "viewer"}).json["token"]
    other = app.test_client()
    sign_in(other, viewer)
    assert other.get("/console/webhooks").status_code == 403
    assert "Webhooks</a>" not in other.get("/console/fleet").text


def test_the_rollout_page_says_who_may_be_a_canary(client, app, tokens) -> None:
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    target = [{"attribute": "app_version", "op": ">=", "value": "4.2"},
              {"attribute": "region", "op": "in", "value": ["eu", "us"]}]
    created = client.post("/v1/rollouts", headers={"Authorization": f"Bearer {tokens['admin']}"},
                          json={"model": "digits-cnn", "candidate_version": "2", "target": target})
    assert created.status_code == 201, created.json
    sign_in(client, tokens["admin"])
    html = client.get(f"/console/rollouts/{created.json['id']}").text
    start = html.index('id="target"')
    shown = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html[start:html.index("</p>", start)]))
    assert "app_version &gt;= 4.2 and region in eu, us" in shown and "stay on 1" in shown


def test_an_operator_starts_a_gated_scheduled_targeted_rollout_from_the_form(client, app, tokens) -> None:
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    sign_in(client, tokens["admin"])
    form = client.get("/console/rollouts/new").text
    assert 'value="digits-cnn/2"' in form and 'value="digits-cnn/1"' not in form  # not the stable one
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    fields = {"csrf": csrf, "release": "digits-cnn/2", "stages": "10,50,100", "min_minutes": "30",
              "min_samples": "1000", "approve_before": "50", "windows": "mon-fri 09:00-17:00 Nowhere/City",
              "target": "app_version>=4.2\nregion in eu,us", "dry_run": ["latency"]}
    refused = client.post("/console/rollouts/new", data=fields)
    assert refused.status_code == 400 and "Nowhere/City" in refused.text  # the API's reason, the form kept
    assert "app_version&gt;=4.2" in refused.text and 'value="latency" checked' in refused.text
    fields["windows"] = "daily 00:00-24:00 UTC"
    created = client.post("/console/rollouts/new", data=fields)
    assert created.status_code == 303, created.text[:2000]
    rollout_id = int(created.headers["Location"].rsplit("/", 1)[1])
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    status = client.get(f"/v1/rollouts/{rollout_id}", headers=admin).json
    assert [s["percent"] for s in status["state"]["stages"]] == [10, 50, 100]
    assert status["state"]["stages"][0]["min_duration_seconds"] == 1800
    assert status["spec"]["target"][1] == {"attribute": "region", "op": "in", "value": ["eu", "us"]}
    dry_run = [g.get("dry_run", False) for g in status["spec"]["guards"]["guards"]]
    assert dry_run == [False, True, False, False]
    assert status["spec"]["schedule"]["windows"][0]["days"][0] == "mon"
    assert status["state"]["approve_before"] == [50]
    again = client.post("/console/rollouts/new", data=fields)
    assert again.status_code == 409 and "already has an active rollout" in again.text


def test_a_viewer_gets_no_rollout_form(client, app, tokens) -> None:
    viewer = client.post("/v1/tokens", headers={"Authorization": f"Bearer {tokens['admin']}"},
                         json={"name": "v", "role": "viewer"}).json["token"]
    sign_in(client, viewer)
    assert client.get("/console/rollouts/new").status_code == 403
    assert "New rollout" not in client.get("/console/rollouts").text


def test_an_admin_adds_tests_and_removes_a_webhook_from_the_console(client, app, tokens) -> None:
    sign_in(client, tokens["admin"])
    page = client.get("/console/webhooks").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    bad = client.post("/console/webhooks", data={"csrf": csrf, "url": "ftp://example.com/x"})
    assert bad.status_code == 400 and "field &#39;url&#39;" in bad.text and "ftp://example.com/x" in bad.text
    added = client.post("/console/webhooks", data={"csrf": csrf, "url": "http://127.0.0.1:9/hook",
                                                   "format": "slack", "kinds": ["verdict_failed"]})
    assert added.status_code == 201
    secret = re.search(r'id="webhook-secret".*?<code>(whsec_[^<]+)</code>', added.text, re.S).group(1)
    assert secret not in client.get("/console/webhooks").text  # shown once, on the answer to the form
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    hooks = client.get("/v1/webhooks", headers=admin).json["webhooks"]
    assert [(h["url"], h["format"], h["kinds"]) for h in hooks] == [("http://127.0.0.1:9/hook", "slack",
                                                                    ["verdict_failed"])]
    hook = hooks[0]["id"]
    assert client.post(f"/console/webhooks/{hook}/test", data={"csrf": csrf}).status_code == 303
    deliveries = client.get(f"/v1/webhooks/{hook}/deliveries", headers=admin).json["deliveries"]
    assert deliveries[0]["kind"] == "test"
    asked = client.post(f"/console/webhooks/{hook}/remove", data={"csrf": csrf})
    assert asked.status_code == 200 and 'id="confirm"' in asked.text
    removed = client.post(f"/console/webhooks/{hook}/remove", data={"csrf": csrf, "confirm": "yes"})
    assert removed.status_code == 303
    assert client.get("/v1/webhooks", headers=admin).json["webhooks"] == []
    entries = client.get("/v1/audit", headers=admin).json["entries"]
    assert {e["action"] for e in entries if e["actor"] == "admin"} >= {"webhook.create", "webhook.test",
                                                                       "webhook.remove"}
