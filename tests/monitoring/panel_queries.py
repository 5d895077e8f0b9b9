"""Every dashboard panel's PromQL, with the Grafana variables filled in, for running it outside Grafana.

Test code: the panel tests, the live-Prometheus test and the demo's end-to-end test send these
expressions to a real Prometheus. It lives here, not in ``monitoring.queries``, because it reads
the dashboards, and the dashboards are built from the query table: the table stays a leaf.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from monitoring.dashboards import DASHBOARDS

#: values for the dashboards' variables when their queries run outside Grafana.
GRAFANA_TEST_VARIABLES: dict[str, str] = {
    "model": ".+",
    "device_class": ".+",
    "__rate_interval": "1m",
    "__range": "1h",
}


def substitute_grafana_variables(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$model``, ``${model}``, ``$__rate_interval``) in ``expr``.

    Raises:
        ValueError: ``expr`` uses a variable that ``variables`` does not give.
    """
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise ValueError(f"no value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_queries(variables: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """Every dashboard panel's queries, ready to run against Prometheus.

    Args:
        variables: values for the dashboards' Grafana variables, over
            :data:`GRAFANA_TEST_VARIABLES` (e.g. ``{"model": "digits-cnn"}``).

    Returns:
        ``(dashboard_uid, panel_title, expr)`` for every target of every panel, in dashboard
        order, with the Grafana variables replaced.
    """
    values = {**GRAFANA_TEST_VARIABLES, **(variables or {})}
    return [(board["uid"], panel["title"], substitute_grafana_variables(target["expr"], values))
            for board in (build() for build in DASHBOARDS)
            for panel in board["panels"] for target in panel.get("targets", [])]
