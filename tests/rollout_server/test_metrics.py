"""/metrics: the catalogue, computed from the database, no per-device labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from edgeship.contract.metrics import BOUNDED_LABELS, METRICS
from tests.rollout_server.conftest import auth, register, seed_release, variant_entry
from tests.rollout_server.test_devices_and_reports import report


def scrape(client) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {f.name: f.samples for f in text_string_to_metric_families(response.get_data(as_text=True))}


def value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_follow_the_reports_and_use_only_bounded_labels(app, client, tokens):
    seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)
    device, credential = register(client, tokens["enroll"], device_class="rpi5")
    client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(credential))
    first = report("r-1")
    client.post("/v1/reports", json={"reports": [first, report("r-2")]}, headers=auth(credential))
    client.post("/v1/reports", json={"reports": [first]}, headers=auth(credential))  # duplicate
    rejected = {"reports": [report(cohort="beta")]}
    client.post("/v1/reports", json=rejected, headers=auth(credential))
    families = scrape(client)
    labels = {"model": "digits-cnn", "variant": "tflite-int8", "cohort": "stable", "device_class": "rpi5"}
    assert value(families["edgeship_inferences"], "edgeship_inferences_total", **labels) == 200
    assert value(families["edgeship_inference_errors"], "edgeship_inference_errors_total",
                 reason="runtime_error", **labels) == 4
    assert value(families["edgeship_eval_samples"], "edgeship_eval_samples_total", **labels) == 40
    histogram = families["edgeship_inference_latency_seconds"]
    assert value(histogram, "edgeship_inference_latency_seconds_count", **labels) == 180
    assert value(histogram, "edgeship_inference_latency_seconds_bucket", le="+Inf", **labels) == 180
    reports = families["edgeship_reports"]
    assert value(reports, "edgeship_reports_total", outcome="accepted") == 2
    assert value(reports, "edgeship_reports_total", outcome="duplicate") == 1
    assert value(reports, "edgeship_reports_total", outcome="rejected") == 1
    assert value(families["edgeship_active_devices"], "edgeship_active_devices", device_class="rpi5") == 1
    for samples in families.values():
        for sample in samples:
            assert set(sample.labels) - {"le"} <= BOUNDED_LABELS
            assert device not in sample.labels.values()


def test_every_exported_family_is_in_the_catalogue(app, client):
    seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)
    names = {name for name in scrape(client)}
    catalogue = {m.removesuffix("_total") for m in METRICS}
    assert names <= catalogue


def test_controller_errors_are_counted_and_a_broken_rollout_does_not_stop_the_pass(app, client, monkeypatch):
    from rollout_server import controller

    families = scrape(client)
    assert value(families["edgeship_controller_errors"], "edgeship_controller_errors_total",
                 reason="pass_failed") == 0  # exported from the start, so increase() sees the first
    stepped: list[int] = []

    def step(session, rollout_id, now, window):
        stepped.append(rollout_id)
        if rollout_id == 1:
            raise RuntimeError("broken rollout")
        return None

    monkeypatch.setattr(controller, "step_rollout", step)
    monkeypatch.setattr(controller, "active_rollout_ids", lambda _: [1, 2])
    controller.step_all(app)
    assert stepped == [1, 2]
    assert value(scrape(client)["edgeship_controller_errors"], "edgeship_controller_errors_total",
                 reason="pass_failed") == 1

