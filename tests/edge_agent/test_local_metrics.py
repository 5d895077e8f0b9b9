"""The agent's local /metrics: catalogue names, the server's latency bounds, valid Prometheus text format."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from edge_agent.local_metrics import LocalMetrics
from edge_agent.window import WindowKey
from edgeship.contract.latency import LATENCY_BUCKETS_SECONDS, METRIC_BUCKETS_SECONDS
from edgeship.contract.metrics import METRICS
from tests.skip_policy import dev_venv_only

STABLE = WindowKey("digits-cnn", "1", "tflite-int8", rollout_id=None, cohort="stable")
CANARY = WindowKey("digits-cnn", "2", "onnx-fp32", rollout_id=4, cohort="canary")
FLEET = ("model", "variant", "cohort", "device_class")

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
ESCAPE = re.compile(r"\\(.)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """A strict little parser of the text format: families (type, help) and samples in order."""
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[len("# HELP "):].split(" ", 1)
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE "):].split(" ")
            assert name not in families, f"{name} declared twice"
            families[name] = (kind, helps[name])
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels_text = match["labels"] or ""
            pairs = LABEL.findall(labels_text)
            assert "".join(f'{k}="{v}",' for k, v in pairs).rstrip(",") == labels_text, line
            labels = {k: ESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], v) for k, v in pairs}
            samples.append((match["name"], labels, float(match["value"])))
    return families, samples


def value(samples, name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples if n == name and ls == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def fleet(key: WindowKey, device_class: str = "rpi4") -> dict[str, str]:
    return {"model": key.model, "variant": key.variant, "cohort": key.cohort, "device_class": device_class}


@pytest.fixture
def metrics() -> LocalMetrics:
    m = LocalMetrics(device_class="rpi4")
    for latency in (0.0008, 0.003, 0.003, 0.2, 7.0):
        m.observe_inference(STABLE, latency)
    m.observe_inference(CANARY, 0.02)
    m.observe_error(CANARY, "timeout")  # an inference that ended in an error
    m.observe_error(CANARY, "golden_mismatch")  # an install error: no inference
    for correct in (True, False, True):
        m.observe_labelled(STABLE, correct)
    m.observe_shadow(CANARY, agree=True, distance=0.25)
    m.observe_shadow(CANARY, agree=False, distance=0.5)
    m.observe_shadow(CANARY, agree=False, distance=float("inf"))  # the candidate failed
    m.set_model("digits-cnn", "1", "tflite-int8")
    m.set_outbox(pending_reports=5, dropped_windows=2)
    return m


def test_fleet_metrics_use_the_catalogue_names_types_help_and_labels(metrics):
    families, samples = parse(metrics.render())
    for name in ("edgeship_inferences_total", "edgeship_inference_errors_total",
                 "edgeship_inference_latency_seconds", "edgeship_eval_samples_total",
                 "edgeship_eval_correct_total"):
        spec = METRICS[name]
        assert families[name] == (spec.kind, spec.help)
        label_sets = [ls for n, ls, _ in samples if n == name or n.startswith(name + "_")]
        assert label_sets
        for labels in label_sets:
            assert tuple(k for k in labels if k != "le") == spec.labels
    assert all(name.startswith("edgeship_") for name in families)
    assert all(name.startswith("edgeship_agent_") for name in families if name not in METRICS)


def test_counters_count_like_reports(metrics):
    _, samples = parse(metrics.render())
    assert value(samples, "edgeship_inferences_total", **fleet(STABLE)) == 5
    assert value(samples, "edgeship_inferences_total", **fleet(CANARY)) == 2  # one ok, one timeout
    assert value(samples, "edgeship_inference_errors_total", **fleet(CANARY), reason="timeout") == 1
    assert value(samples, "edgeship_inference_errors_total", **fleet(CANARY), reason="golden_mismatch") == 1
    assert value(samples, "edgeship_eval_samples_total", **fleet(STABLE)) == 3
    assert value(samples, "edgeship_eval_correct_total", **fleet(STABLE)) == 2
    assert value(samples, "edgeship_agent_shadow_samples_total", **fleet(CANARY)) == 3
    assert value(samples, "edgeship_agent_shadow_agree_total", **fleet(CANARY)) == 1
    assert value(samples, "edgeship_agent_shadow_measured_total", **fleet(CANARY)) == 2
    assert value(samples, "edgeship_agent_shadow_distance_total", **fleet(CANARY)) == 0.75
    assert value(samples, "edgeship_agent_model_info", model="digits-cnn", version="1",
                 variant="tflite-int8", device_class="rpi4") == 1
    assert value(samples, "edgeship_agent_outbox_reports", device_class="rpi4") == 5
    assert value(samples, "edgeship_agent_dropped_windows", device_class="rpi4") == 2
    assert value(samples, "edgeship_agent_peak_rss_bytes", device_class="rpi4") > 2**20


def stable_buckets(samples, key: WindowKey = STABLE) -> list[tuple[str, float]]:
    name = "edgeship_inference_latency_seconds_bucket"
    return [(ls["le"], v) for n, ls, v in samples if n == name and {k: ls[k] for k in FLEET} == fleet(key)]


def test_the_histogram_is_cumulative_on_the_metric_bounds(metrics):
    _, samples = parse(metrics.render())
    name = "edgeship_inference_latency_seconds"
    buckets = stable_buckets(samples)
    assert [le for le, _ in buckets] == [repr(b) for b in METRIC_BUCKETS_SECONDS] + ["+Inf"]
    assert len(buckets) == len(METRIC_BUCKETS_SECONDS) + 1
    assert {repr(b) for b in LATENCY_BUCKETS_SECONDS} <= {le for le, _ in buckets}  # the v1 bounds too
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative never decreases
    by_le = dict(buckets)
    # 0.0008, 0.003, 0.003, 0.2 and 7.0 s: each counted from its own bound up (7.0 is one)
    assert (by_le["0.00075"], by_le["0.0008"], by_le["0.00275"], by_le["0.003"], by_le["0.19"],
            by_le["0.2"], by_le["6.5"], by_le["7.0"], by_le["10.0"], by_le["+Inf"]) == (
        0, 1, 1, 3, 3, 4, 4, 5, 5, 5)
    assert value(samples, name + "_count", **fleet(STABLE)) == 5
    assert value(samples, name + "_sum", **fleet(STABLE)) == pytest.approx(7.2068)
    # the timeout counted an inference but has no latency
    assert value(samples, name + "_count", **fleet(CANARY)) == 1


def test_latencies_land_in_the_bucket_of_the_first_bound_at_or_above_them():
    m = LocalMetrics(device_class="rpi4")
    for bound in METRIC_BUCKETS_SECONDS:
        m.observe_inference(STABLE, bound)  # on the bound: that bucket (le)
        m.observe_inference(STABLE, bound * 1.000001)  # just above: the next one
    m.observe_inference(STABLE, 0.0)
    m.observe_inference(STABLE, 60.0)
    _, samples = parse(m.render())
    cumulative = [v for _, v in stable_buckets(samples)]
    per_bucket = [c - (cumulative[i - 1] if i else 0) for i, c in enumerate(cumulative)]
    # 0 and the first bound in the first bucket; in each next one the value just above the
    # previous bound and its own bound; 10 s * 1.000001 and 60 s in +Inf
    assert per_bucket == [2] + [2] * (len(METRIC_BUCKETS_SECONDS) - 1) + [2]


def test_bounds_are_spelled_as_prometheus_client_spells_them(metrics):
    utils = dev_venv_only("prometheus_client.utils")
    _, samples = parse(metrics.render())
    assert [le for le, _ in stable_buckets(samples)] == [
        utils.floatToGoString(b) for b in (*METRIC_BUCKETS_SECONDS, float("inf"))]


def test_set_model_replaces_the_previous_version_and_clear_model_forgets(metrics):
    metrics.set_model("digits-cnn", "2", "onnx-fp32")
    metrics.set_model("other", "7", "coreml-fp16")
    _, samples = parse(metrics.render())
    info = sorted((ls["model"], ls["version"]) for n, ls, _ in samples if n == "edgeship_agent_model_info")
    assert info == [("digits-cnn", "2"), ("other", "7")]
    metrics.clear_model("other")
    _, samples = parse(metrics.render())
    assert [ls["model"] for n, ls, _ in samples if n == "edgeship_agent_model_info"] == ["digits-cnn"]


def test_label_values_are_escaped():
    m = LocalMetrics(device_class='pi "4"\\lab\nbench')
    m.observe_labelled(STABLE, True)
    text = m.render()
    assert 'device_class="pi \\"4\\"\\\\lab\\nbench"' in text
    _, samples = parse(text)
    assert value(samples, "edgeship_eval_samples_total", **fleet(STABLE, 'pi "4"\\lab\nbench')) == 1


def test_bad_observations_are_refused():
    m = LocalMetrics(device_class="rpi4")
    with pytest.raises(ValueError, match="meltdown"):
        m.observe_error(STABLE, "meltdown")
    with pytest.raises(ValueError, match="latency"):
        m.observe_inference(STABLE, -0.1)
    with pytest.raises(ValueError, match="distance"):
        m.observe_shadow(STABLE, True, float("nan"))
    _, samples = parse(m.render())
    assert [n for n, _, _ in samples] == ["edgeship_agent_peak_rss_bytes"]


def test_prometheus_own_parser_reads_it(metrics):
    parser = dev_venv_only("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(metrics.render())}
    histogram = families["edgeship_inference_latency_seconds"]
    assert histogram.type == "histogram"
    stable = [s for s in histogram.samples if s.labels.get("cohort") == "stable"]
    assert [s.value for s in stable if s.name.endswith("_count")] == [5.0]
    assert families["edgeship_inferences"].type == "counter"  # the parser drops _total
    total = sum(s.value for s in families["edgeship_inferences"].samples)
    assert total == 7.0


def test_serve_answers_metrics_and_404_elsewhere(metrics):
    server, thread = metrics.serve()
    try:
        assert thread.daemon and metrics.port == server.server_port and metrics.port > 0
        base = f"http://127.0.0.1:{metrics.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = response.read().decode()
        _, samples = parse(body)
        assert value(samples, "edgeship_inferences_total", **fleet(STABLE)) == 5
        metrics.observe_inference(STABLE, 0.001)
        with urllib.request.urlopen(base + "/metrics?x=1", timeout=5) as response:
            _, samples = parse(response.read().decode())
        assert value(samples, "edgeship_inferences_total", **fleet(STABLE)) == 6
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + "/", timeout=5)
        assert caught.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()
