"""Rules, promtool tests, dashboards and the server agree with the metric catalogue and buckets."""

from __future__ import annotations

import re

import pytest

from edgeship.contract.latency import LATENCY_BUCKETS_SECONDS, METRIC_BUCKETS_SECONDS
from edgeship.contract.metrics import METRICS, MetricSpec
from monitoring.alert_tests import promtool_cases
from monitoring.alerts import ALERTS
from monitoring.dashboards import DASHBOARDS
from monitoring.queries import ACTIVE_ROLLOUT_PHASES, QUERIES, render
from tests.monitoring.promql_refs import (
    created_labels,
    grouping_labels,
    label_values_refs,
    resolve,
    selectors,
)

#: metrics the rules use that the server does not export yet (see docs/monitoring.md). When the
#: server and the catalogue gain one, remove it here: the first test fails until then.
AWAITING_SERVER: dict[str, MetricSpec] = {}  # metrics the rules use before the server exports them
CATALOGUE = {**METRICS, **AWAITING_SERVER}
#: the ``le`` values of the /metrics latency histogram, as prometheus_client prints them
#: (``floatToGoString``; tests below check it agrees).
LE_VALUES = [*map(repr, METRIC_BUCKETS_SECONDS), "+Inf"]
BOUNDS = set(LE_VALUES)


def expressions() -> dict[str, str]:
    """Every generated expression: where it comes from → PromQL."""
    exprs = {f"rule {alert.name}": alert.expr for alert in ALERTS}
    exprs |= {f"query {name}": render(name) for name in QUERIES}
    for board in (build() for build in DASHBOARDS):
        for panel in board["panels"]:
            for target in panel["targets"]:
                exprs[f"{board['uid']} / {panel['title']} / {target['refId']}"] = target["expr"]
    return exprs


def series_names() -> list[tuple[str, str]]:
    """Series of the promtool tests: (test name, series selector)."""
    return [(case["name"], series["series"]) for case in promtool_cases() for series in case["input_series"]]


def test_every_metric_referenced_is_in_the_catalogue_or_awaited_from_the_server():
    names = {s.name for expr in expressions().values() for s in selectors(expr)}
    names |= {s.name for _, series in series_names() for s in selectors(series)}
    names |= {metric for board in (b() for b in DASHBOARDS) for variable in board["templating"]["list"]
              for metric, _ in label_values_refs(variable.get("definition", ""))}
    unknown = {name for name in names if resolve(name) is None}
    assert unknown == set(AWAITING_SERVER), (
        f"not in edgeship.contract.metrics: {sorted(unknown - set(AWAITING_SERVER))}; "
        f"now in the catalogue, remove from AWAITING_SERVER: {sorted(set(AWAITING_SERVER) - unknown)}")
    assert all(resolve(name, CATALOGUE) for name in names)


def test_matchers_use_only_the_metrics_labels_and_known_values():
    pytest.importorskip("scipy")  # the server's analysis package, for its Phase enum
    from rollout_server.analysis.rollout import Phase

    for origin, expr in expressions().items():
        for selector in selectors(expr):
            spec, extra = resolve(selector.name, CATALOGUE)
            for label, value in selector.matchers:
                assert label in (*spec.labels, *extra), f"{origin}: {selector.name} has no label {label!r}"
                if label == "le":
                    assert value in BOUNDS, f"{origin}: le={value!r} is not a latency bound"
                if label == "phase":
                    assert set(value.split("|")) <= {p.value for p in Phase}, f"{origin}: phase {value!r}"
                if label == "cohort" and value != ".+":
                    assert set(value.split("|")) <= {"stable", "canary"}, f"{origin}: cohort {value!r}"


def test_the_active_phases_are_the_servers():
    pytest.importorskip("scipy")  # the server's analysis package, for its Phase enum
    from rollout_server.analysis.rollout import Phase

    assert tuple(p.value for p in Phase.active()) == ACTIVE_ROLLOUT_PHASES


def test_grouping_legend_and_annotation_labels_exist_on_the_metrics_used():
    for origin, expr in expressions().items():
        available = set(created_labels(expr))
        for selector in selectors(expr):
            spec, extra = resolve(selector.name, CATALOGUE)
            available |= {*spec.labels, *extra}
        assert grouping_labels(expr) <= available, f"{origin}: groups by {grouping_labels(expr) - available}"
    for alert in ALERTS:
        used = set(re.findall(r"\$labels\.(\w+)", alert.summary + alert.description))
        available = created_labels(alert.expr) | grouping_labels(alert.expr)
        assert used <= available, f"{alert.name}: annotations use {used - available}"
    for board in (build() for build in DASHBOARDS):
        for panel in board["panels"]:
            for target in panel["targets"]:
                legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
                groups = grouping_labels(target["expr"]) | created_labels(target["expr"])
                assert legend <= groups, f"{board['uid']} / {panel['title']}: legend uses {legend - groups}"


def test_promtool_series_carry_exactly_the_labels_the_server_exports():
    for case, series in series_names():
        (selector,) = selectors(series)
        spec, extra = resolve(selector.name, CATALOGUE)
        assert {label for label, _ in selector.matchers} == {*spec.labels, *extra}, f"{case}: {series}"
        for label, value in selector.matchers:
            assert label != "le" or value in BOUNDS, f"{case}: {series}"


def test_promtool_histograms_use_every_bucket_bound():
    bounds = {value for _, series in series_names() for s in selectors(series)
              for label, value in s.matchers if label == "le"}
    assert bounds == BOUNDS


def test_le_values_are_spelled_as_prometheus_client_spells_them():
    from prometheus_client.utils import floatToGoString

    from monitoring.queries import LE_VALUES as QUERY_LE_VALUES

    printed = [floatToGoString(b) for b in (*METRIC_BUCKETS_SECONDS, float("inf"))]
    assert printed == LE_VALUES
    assert set(QUERY_LE_VALUES) | {"+Inf"} == BOUNDS
    assert {repr(b) for b in LATENCY_BUCKETS_SECONDS} <= BOUNDS  # the v1 bounds are metric bounds too


def test_dashboard_variables_query_catalogue_labels():
    for board in (build() for build in DASHBOARDS):
        for variable in board["templating"]["list"]:
            for metric, label in label_values_refs(variable.get("definition", "")):
                assert label in METRICS[metric].labels, f"{board['uid']}: {variable['name']}"


def scrape(app) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}


def test_the_server_exports_every_catalogue_metric_with_its_labels(seeded_app):
    families = scrape(seeded_app)
    for name, spec in METRICS.items():
        family = families.get(name.removesuffix("_total") if spec.kind == "counter" else name)
        assert family is not None, f"{name} is not exported by the server"
        assert family.type == spec.kind, f"{name}: exported as {family.type}, catalogued as {spec.kind}"
        assert family.samples, f"{name}: exported without samples (seed data missing?)"
        for sample in family.samples:
            resolved = resolve(sample.name)
            assert resolved is not None and resolved[0] is spec, sample.name
            assert set(sample.labels) == {*spec.labels, *resolved[1]}, f"{sample.name}: {sample.labels}"


def test_the_server_exports_the_metric_latency_buckets(seeded_app):
    histogram = scrape(seeded_app)["edgeship_inference_latency_seconds"]
    series = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
              for s in histogram.samples if s.name.endswith("_bucket")}
    for labels in series:
        bounds = [s.labels["le"] for s in histogram.samples
                  if s.name.endswith("_bucket") and tuple(sorted((k, v) for k, v in s.labels.items()
                                                                 if k != "le")) == labels]
        assert bounds == LE_VALUES
