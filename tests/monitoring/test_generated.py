"""The committed rules, configuration, dashboards and provisioning are what the generator makes."""

from __future__ import annotations

import json
import re

import pytest

from monitoring import build
from monitoring.alert_tests import alert_tests_yaml, promtool_cases
from monitoring.alerts import ALERTS, rules_document
from monitoring.dashboards import DASHBOARDS, dashboard_provisioning, datasource_provisioning
from monitoring.grafana import SCHEMA_VERSION
from monitoring.queries import QUERIES, render
from monitoring.scrape_config import scrape_config


def test_committed_files_match_the_generator():
    problems = build.differences()
    assert not problems, "generated files are out of date; run `python -m monitoring.build`:\n" + "\n".join(
        problems)


def test_build_writes_every_file_and_check_then_passes(tmp_path):
    (tmp_path / "grafana/dashboards").mkdir(parents=True)
    (tmp_path / "grafana/dashboards/old.json").write_text("{}")
    assert build.differences(tmp_path)
    changed = build.write(tmp_path)
    assert set(build.generated_files()) | {"grafana/dashboards/old.json"} == set(changed)
    assert not build.differences(tmp_path) and not (tmp_path / "grafana/dashboards/old.json").exists()
    assert build.main(["--check"]) == 0


def test_yaml_files_read_back_as_the_documents():
    yaml = pytest.importorskip("yaml")
    files = build.generated_files()
    assert yaml.safe_load(files["prometheus/alerts.yml"]) == rules_document()
    assert yaml.safe_load(files["prometheus/prometheus.yml"]) == scrape_config()
    provisioning = "grafana/provisioning/{}/edgeship.yaml"
    assert yaml.safe_load(files[provisioning.format("datasources")]) == datasource_provisioning()
    assert yaml.safe_load(files[provisioning.format("dashboards")]) == dashboard_provisioning()
    tests = yaml.safe_load(alert_tests_yaml())
    assert tests["tests"] == promtool_cases() and tests["rule_files"] == ["alerts.yml"]


def test_rules_have_severity_and_templated_annotations():
    names = [alert.name for alert in ALERTS]
    assert len(set(names)) == len(names)
    for alert in ALERTS:
        rule = alert.to_dict()
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}
        assert "{{ $" in rule["annotations"]["summary"] + rule["annotations"]["description"]  # templated


@pytest.mark.parametrize("build_board", DASHBOARDS, ids=lambda f: f.__name__)
def test_dashboard_shape(build_board):
    board = build_board()
    assert board["uid"].startswith("edgeship-") and len(board["uid"]) <= 40
    assert board["schemaVersion"] == SCHEMA_VERSION
    variables = {v["name"]: v for v in board["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used = {name for name in ("model", "device_class") if f"${name}" in target["expr"]}
            assert used <= set(variables), f"{panel['title']} uses undefined variables"


def _skeleton(expr: str) -> str:
    """The expression with its parameters (strings, ranges, offsets) blanked out."""
    return re.sub(r'"[^"]*"|\[[^\]]*\]|offset \S+', "_", expr)


def test_dashboard_targets_are_rendered_from_the_query_table():
    table = {_skeleton(render(name)) for name in QUERIES}
    for board in (b() for b in DASHBOARDS):
        for panel in board["panels"]:
            for target in panel["targets"]:
                assert _skeleton(target["expr"]) in table, f"{board['uid']} / {panel['title']}"


def test_dashboards_are_valid_json_with_stable_uids():
    files = build.generated_files()
    uids = {json.loads(text)["uid"] for path, text in files.items() if path.endswith(".json")}
    assert uids == {"edgeship-fleet", "edgeship-rollout", "edgeship-device-class"}
