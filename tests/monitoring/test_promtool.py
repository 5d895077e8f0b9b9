"""promtool: the rules and the scrape configuration are valid, and the rules' unit tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from monitoring.alert_tests import covered
from monitoring.build import ROOT
from monitoring.scrape_config import render_scrape_config, scrape_config

PROMETHEUS_DIR = ROOT / "prometheus"


def run(*command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_alert_has_a_firing_and_a_quiet_promtool_check():
    assert all(fires and quiet for fires, quiet in covered().values()), covered()


def test_scrape_config_takes_one_rule_file_or_several_and_refuses_bad_values(tmp_path: Path):
    assert scrape_config(rule_files=tmp_path / "a.yml")["rule_files"] == [str(tmp_path / "a.yml")]
    assert scrape_config(rule_files=["a.yml", "b.yml"])["rule_files"] == ["a.yml", "b.yml"]
    job = scrape_config("10.0.0.5:9000")["scrape_configs"][0]
    assert (job["job_name"], job["metrics_path"], job["static_configs"]) == (
        "edgeship-server", "/metrics", [{"targets": ["10.0.0.5:9000"]}])
    for bad in ({"target": "http://x:1"}, {"target": "x"}, {"scrape_interval": "1 s"}, {"scheme": "ftp"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            scrape_config(**bad)


def test_rules_are_valid(promtool: str):
    out = run(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert "SUCCESS" in out


def test_rendered_scrape_config_is_valid(promtool: str, tmp_path: Path):
    rules = shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "edgeship-alerts.yml")
    config = tmp_path / "prometheus.yml"
    config.write_text(render_scrape_config("edgeship.example:8080", rule_files=rules))
    assert "SUCCESS" in run(promtool, "check", "config", str(config))
    # the committed configuration, with its rule file beside it
    assert "SUCCESS" in run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


def test_alert_unit_tests_pass(promtool: str):
    out = run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in out
