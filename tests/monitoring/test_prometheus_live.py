"""A real Prometheus scrapes a live rollout server: every panel query parses, every rule evaluates."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.alerts import ALERTS
from monitoring.build import ROOT
from monitoring.scrape_config import JOB, render_scrape_config
from tests.monitoring.conftest import MODEL
from tests.monitoring.panel_queries import panel_queries
from tests.processes import stop_processes
from tests.rollout_server.postgres import free_port

STARTUP_SECONDS = 30


def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # 400 with a JSON body for a query that does not parse
        return json.load(error)


def wait_for(condition, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"prometheus: no {what} within {STARTUP_SECONDS}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def prometheus(prometheus_binary: str, seeded_server: str, tmp_path_factory) -> Iterator[str]:
    """Prometheus scraping the seeded server every second with the alert rules; yields its URL."""
    root = tmp_path_factory.mktemp("prometheus")
    rules = shutil.copy(ROOT / "prometheus" / "alerts.yml", root / "alerts.yml")
    config = root / "prometheus.yml"
    config.write_text(render_scrape_config(seeded_server, rule_files=[str(rules)], scrape_interval="1s",
                                           evaluation_interval="1s"))
    log = root / "prometheus.log"
    scraped = f'up{{job="{JOB}"}} == 1'
    for attempt in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        with log.open("w") as out:
            process = subprocess.Popen(
                [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, cwd=root)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda url=base: api(url, "/api/v1/query", query=scraped)["data"]["result"],
                     "successful scrape", process, log)
            break
        except (RuntimeError, TimeoutError):
            process.terminate()
            process.wait(timeout=10)
            if attempt == 2:
                raise
    try:
        yield base
    finally:
        stop_processes(process, timeout=10)


def test_every_panel_query_parses_on_a_real_prometheus(prometheus: str):
    failures = []
    for uid, title, expr in panel_queries({"model": MODEL}):
        answer = api(prometheus, "/api/v1/query", query=expr)
        if answer.get("status") != "success":
            failures.append(f"{uid} / {title}: {answer.get('error')}\n{expr}")
    assert not failures, "\n\n".join(failures)


def test_the_server_metrics_arrive_and_every_rule_evaluates(prometheus: str):
    result = api(prometheus, "/api/v1/query", query="count by (__name__) ({__name__=~\"edgeship_.+\"})")
    assert "edgeship_inferences_total" in {r["metric"]["__name__"] for r in result["data"]["result"]}

    def rules() -> dict[str, dict]:
        groups = api(prometheus, "/api/v1/rules")["data"]["groups"]
        return {rule["name"]: rule for group in groups for rule in group["rules"]}

    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and any(r["health"] == "unknown" for r in rules().values()):
        time.sleep(0.2)
    loaded = rules()
    assert set(loaded) == {alert.name for alert in ALERTS}
    assert {name: rule.get("lastError", "") for name, rule in loaded.items() if rule["health"] != "ok"} == {}
