"""/metrics: the catalogue, computed from the database, no per-device labels."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeship.contract.metrics import BOUNDED_LABELS, METRICS
from tests.rollout_server.conftest import BOTH_BACKENDS, auth, register, seed_release, variant_entry
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




@BOTH_BACKENDS
def test_optional_report_values_are_summed_and_counted_only_where_reports_carry_them(app, client, tokens):
    """Peak RSS, load time and CPU temperature are quantile-less summaries (``_sum`` of the values
    given, ``_count`` of the reports that gave one) and ``throttled`` two counters; a report without
    a field adds to neither, so a mean over a window is never pulled down by absent values. On
    SQLite and PostgreSQL."""
    seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)
    device, credential = register(client, tokens["enroll"], device_class="rpi5")
    client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(credential))
    assert scrape(client).get("edgeship_report_load_seconds", []) == []  # no report yet: no series
    given = [
        {"peak_rss_bytes": 100 * 2**20, "load_seconds": 0.25, "cpu_temp_celsius": 61.5, "throttled": True},
        {"peak_rss_bytes": 300 * 2**20, "cpu_temp_celsius": -8.0, "throttled": False},
        {"load_seconds": 1.5, "throttled": False},
        {},  # a device that could tell nothing
    ]
    batch = [report(f"v-{i}", **values) for i, values in enumerate(given)]
    for body in (batch[:3], batch[3:], batch[:1]):  # the last is a duplicate: adds nothing
        answer = client.post("/v1/reports", json={"reports": body}, headers=auth(credential))
        assert answer.status_code == 200, answer.json
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    labels = {"model": "digits-cnn", "variant": "tflite-int8", "cohort": "stable", "device_class": "rpi5"}
    assert value(families["edgeship_reports"].samples, "edgeship_reports_total", outcome="accepted") == 4

    def summary(name: str) -> tuple[float, float]:
        family = families[name]
        assert family.type == "summary"
        assert {s.name for s in family.samples} == {f"{name}_sum", f"{name}_count"}  # no quantiles
        return (value(family.samples, f"{name}_sum", **labels),
                value(family.samples, f"{name}_count", **labels))

    assert summary("edgeship_report_peak_rss_bytes") == (400 * 2**20, 2)
    assert summary("edgeship_report_load_seconds") == (1.75, 2)
    kelvin, readings = summary("edgeship_report_cpu_temperature_kelvin")  # °C + 273.15 per reading
    assert readings == 2 and kelvin == pytest.approx(61.5 - 8.0 + 2 * 273.15, abs=1e-9)
    for name, expected in (("edgeship_reports_throttled", 1), ("edgeship_reports_throttle_known", 3)):
        assert families[name].type == "counter"
        assert value(families[name].samples, f"{name}_total", **labels) == expected
    for name in ("edgeship_report_peak_rss_bytes", "edgeship_report_load_seconds",
                 "edgeship_report_cpu_temperature_kelvin", "edgeship_reports_throttled",
                 "edgeship_reports_throttle_known"):
        for sample in families[name].samples:
            assert sample.labels == labels and device not in sample.labels.values()



def test_float_sums_are_exact_whatever_order_the_shards_are_read_in(app, client, tokens):
    """The float sums of several shards of one key are summed exactly (``math.fsum``), not in the
    order SQL reads them: read in another order (PostgreSQL, after an update) the same totals could
    print one bit smaller, which Prometheus takes for a counter reset."""
    from rollout_server.db import session_scope
    from rollout_server.models import ReportTotal

    seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)
    device, credential = register(client, tokens["enroll"], device_class="rpi5")
    client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(credential))
    answer = client.post("/v1/reports", json={"reports": [report("s-0", load_seconds=0.1)]},
                         headers=auth(credential))
    assert answer.status_code == 200, answer.json
    with session_scope(app) as session:  # as if two more processes had each stored a report
        (row,) = session.query(ReportTotal).all()
        for step, load in ((1, 0.2), (2, 0.3)):
            session.add(ReportTotal(model_id=row.model_id, variant_id=row.variant_id, cohort=row.cohort,
                                    device_class=row.device_class, shard=(row.shard + step) % 16,
                                    reports=1, load_seconds_sum=load, load_reports=1))
    samples = scrape(client)["edgeship_report_load_seconds"]
    assert value(samples, "edgeship_report_load_seconds_sum") == 0.6  # (0.1 + 0.2) + 0.3 != 0.6
    assert value(samples, "edgeship_report_load_seconds_count") == 3
