"""The query table: rendering, parameter checks, the panel query list."""

from __future__ import annotations

import pytest

from monitoring.dashboards import DASHBOARDS
from monitoring.queries import DEFAULT_PARAMS, QUERIES, render
from tests.monitoring.panel_queries import panel_queries, substitute_grafana_variables


def test_every_query_renders_with_defaults_and_documents_itself():
    for name, query in QUERIES.items():
        expr = render(name)
        assert "$" not in expr, name
        assert query.params <= set(DEFAULT_PARAMS), name
        assert query.help and query.unit, name


def test_parameters_fill_the_matchers():
    expr = render("latency_p95", model="digits-cnn", cohort="canary", window="10m")
    assert 'model=~"digits-cnn"' in expr and 'cohort=~"canary"' in expr and "[10m]" in expr
    assert "[$__rate_interval]" in render("error_ratio", window="$__rate_interval", model="$model")


@pytest.mark.parametrize("name, params, fragment", [
    ("nope", {}, "unknown query"),
    ("error_ratio", {"modle": "x"}, "unknown query parameters"),
    ("error_ratio", {"window": "5 minutes"}, "window"),
    ("error_ratio", {"model": 'x"} or vector(1)'}, "quotes"),
    ("latency_under_le_ratio", {"le": "0.10"}, "le must be a bound"),
    ("latency_under_le_ratio", {"le": "fast"}, "le must be a bound"),
])
def test_bad_names_and_values_are_refused_with_the_value(name, params, fragment):
    with pytest.raises(ValueError, match=fragment):
        render(name, **params)


def test_grafana_variables_are_substituted_or_refused():
    assert substitute_grafana_variables('x{a=~"$model"}[${__rate_interval}]',
                                        {"model": "m", "__rate_interval": "1m"}) == 'x{a=~"m"}[1m]'
    with pytest.raises(ValueError, match=r"\$device_class"):
        substitute_grafana_variables('x{a=~"$device_class"}', {})


def test_panel_queries_cover_every_panel_with_runnable_promql():
    rows = panel_queries({"model": "digits-cnn"})
    boards = [build() for build in DASHBOARDS]
    expected = [(b["uid"], p["title"]) for b in boards for p in b["panels"] for _ in p["targets"]]
    assert [(uid, title) for uid, title, _ in rows] == expected
    assert all("$" not in expr for _, _, expr in rows)
    assert any('model=~"digits-cnn"' in expr for uid, _, expr in rows if uid == "edgeship-rollout")
