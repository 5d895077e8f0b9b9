"""Grafana dashboard JSON from panels whose queries come from :mod:`monitoring.queries`.

Usage::

    board = dashboard(
        uid="edgeship-example", title="edgeship / Example", description="...",
        variables=[query_variable("model", "Model", "edgeship_rollout_phase")],
        params={"model": "$model"},
        panels=[Panel("Error ratio by cohort", (Target("error_ratio"),))],
    )

Every panel and target uses the ``${datasource}`` variable (type prometheus), so the JSON
works with any Prometheus data source. Panels are laid out left to right in rows of 24
columns; ids and refIds are assigned in order, so the output is stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Any

from monitoring.queries import DEFAULT_PARAMS, QUERIES, render

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
GRID_COLUMNS = 24
#: placeholder values every dashboard uses unless it says otherwise.
DASHBOARD_PARAMS = {"window": "$__rate_interval"}


@dataclass(frozen=True)
class Target:
    """One query of a panel: a name from the query table, its parameters and legend."""

    query: str
    params: Mapping[str, str] = field(default_factory=dict)
    legend: str | None = None


@dataclass(frozen=True)
class Panel:
    """A dashboard panel.

    Attributes:
        title: panel title (unique within a dashboard).
        targets: its queries.
        kind: ``timeseries``, ``stat``, ``table`` or ``heatmap``.
        width, height: grid size (24 columns wide in all).
        unit: Grafana unit; defaults to the first query's.
        description: defaults to the first query's help.
        text_mode: stat panels: ``auto``, ``value``, ``name`` or ``value_and_name``.
        thresholds: ``(value, color)`` steps, the first value ``None`` (base color).
    """

    title: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    unit: str | None = None
    description: str | None = None
    text_mode: str = "auto"
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)


def stat(title: str, *targets: Target, **options: Any) -> Panel:
    """A small single-value panel (6 columns, 4 rows)."""
    return Panel(title, targets, kind="stat", width=options.pop("width", 6), height=4, **options)


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def query_variable(name: str, label: str, metric: str, multi: bool = False) -> dict[str, Any]:
    """A variable listing the values of label ``name`` on ``metric``; ``multi`` adds All (``.+``)."""
    definition = f"label_values({metric}, {name})"
    variable = {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "definition": definition,
        "query": {"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {}, "hide": 0, "includeAll": multi, "multi": multi, "options": [], "refresh": 2,
        "regex": "", "skipUrlSync": False, "sort": 1,
    }
    if multi:
        variable["allValue"] = ".+"
    return variable


def dashboard(uid: str, title: str, description: str, variables: Sequence[dict[str, Any]],
              params: Mapping[str, str], panels: Sequence[Panel]) -> dict[str, Any]:
    """The dashboard JSON model.

    Args:
        uid: stable identifier (links and provisioning rely on it).
        title: shown title.
        description: dashboard description.
        variables: template variables after ``datasource``.
        params: query placeholder values over :data:`DASHBOARD_PARAMS`, usually Grafana
            variables (``{"model": "$model"}``).
        panels: the panels, laid out in order.

    Raises:
        ValueError: duplicate panel titles or an unknown query.
    """
    titles = [panel.title for panel in panels]
    if len(set(titles)) != len(titles):
        raise ValueError(f"panel titles repeat in {uid}: {titles}")
    values = {**DASHBOARD_PARAMS, **params}
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["edgeship"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [{"title": "edgeship", "type": "dashboards", "tags": ["edgeship"], "asDropdown": True}],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": [_panel(panel, i + 1, grid, values)
                   for i, (panel, grid) in enumerate(zip(panels, _layout(panels), strict=True))],
    }


def _layout(panels: Sequence[Panel]) -> list[dict[str, int]]:
    grids, x, y, row_height = [], 0, 0, 0
    for panel in panels:
        if x + panel.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        grids.append({"h": panel.height, "w": panel.width, "x": x, "y": y})
        x += panel.width
        row_height = max(row_height, panel.height)
    return grids


def _panel(panel: Panel, panel_id: int, grid: dict[str, int], values: Mapping[str, str]) -> dict[str, Any]:
    first = QUERIES.get(panel.targets[0].query)
    if first is None:
        raise ValueError(f"unknown query {panel.targets[0].query!r} in panel {panel.title!r}")
    help_values = {**DEFAULT_PARAMS, **values, **panel.targets[0].params}
    description = panel.description or Template(first.help).safe_substitute(help_values)
    steps = [{"color": color, "value": value} for value, color in panel.thresholds]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": {"unit": panel.unit or first.unit,
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": _options(panel),
        "targets": [_target(target, chr(ord("A") + i), panel.kind, values)
                    for i, target in enumerate(panel.targets)],
    }


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": panel.text_mode, "colorMode": "value", "graphMode": "none",
                "justifyMode": "auto", "orientation": "auto"}
    if panel.kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    if panel.kind == "heatmap":
        return {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "tooltip": {"mode": "single", "yHistogram": True}}
    return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"}}


def _target(target: Target, ref_id: str, kind: str, values: Mapping[str, str]) -> dict[str, Any]:
    query = QUERIES.get(target.query)
    if query is None:
        raise ValueError(f"unknown query {target.query!r}")
    out = {"datasource": DATASOURCE, "refId": ref_id, "editorMode": "code",
           "expr": render(target.query, **{**values, **target.params}),
           "legendFormat": target.legend if target.legend is not None else query.legend or "__auto",
           "range": kind != "table", "instant": kind == "table"}
    if kind in ("table", "heatmap"):
        out["format"] = kind
    return out
