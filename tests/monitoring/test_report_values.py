"""The means of the optional report values, by Prometheus' own engine (``promtool test rules``).

Series shaped like the server's ``/metrics`` (``edgeship_report_*`` summaries and the
``throttled`` counters): the stable cohort's reports carry the values, the canary's never do.
The dashboard queries must give the stable cohort's exact mean (sub-zero temperatures included)
and no series at all for the canary, never a 0 that would read as "cool, unthrottled, no memory".
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgeship.contract.metrics import METRICS
from monitoring.queries import QUERIES, render
from monitoring.yaml_text import to_yaml

MIB = 2**20
LABELS = 'model="m", variant="v", device_class="rpi4"'
#: reports per minute in the stable cohort carrying each value; the canary's carry none.
PER_MINUTE = 4
MINUTES = 10
#: query → (summary or counters, the value each stable report adds to the sum, expected result).
CASES = {
    "peak_rss_mean_mib": ("edgeship_report_peak_rss_bytes", 96 * MIB, 96.0),
    "load_seconds_mean": ("edgeship_report_load_seconds", 0.75, 0.75),
    "cpu_temperature_mean": ("edgeship_report_cpu_temperature_kelvin", 273.15 - 12.5, -12.5),
}


def _series(name: str, cohort: str, per_minute: float) -> dict[str, str]:
    return {"series": f'{name}{{{LABELS}, cohort="{cohort}"}}', "values": f"0+{per_minute!r}x{MINUTES}"}


def _exact(query: str, expected: float) -> dict:
    """The query gives ``expected`` for the stable cohort, and nothing for the canary."""
    expr = f"abs(({render(query, model='m', window='5m')}) - {expected!r}) < bool 1e-9"
    return {"expr": expr, "eval_time": f"{MINUTES}m",
            "exp_samples": [{"labels": '{model="m", cohort="stable"}', "value": 1}]}


def test_report_value_queries_give_the_mean_over_reports_that_carried_one(promtool: str, tmp_path: Path):
    series, checks = [], []
    for query, (metric, value, expected) in CASES.items():
        assert METRICS[metric].kind == "summary" and QUERIES[query].unit
        series += [_series(f"{metric}_sum", "stable", value * PER_MINUTE),
                   _series(f"{metric}_count", "stable", PER_MINUTE),
                   _series(f"{metric}_sum", "canary", 0), _series(f"{metric}_count", "canary", 0)]
        checks.append(_exact(query, expected))
    # throttled: 1 in 4 stable reports said true; no canary report said either way
    series += [_series("edgeship_reports_throttled_total", "stable", 1),
               _series("edgeship_reports_throttle_known_total", "stable", PER_MINUTE),
               _series("edgeship_reports_throttled_total", "canary", 0),
               _series("edgeship_reports_throttle_known_total", "canary", 0)]
    checks.append(_exact("throttled_ratio", 0.25))
    tests = tmp_path / "report_values_test.yml"
    tests.write_text(to_yaml({"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"name": "report value means", "interval": "1m", "input_series": series,
         "promql_expr_test": checks}]}))
    result = subprocess.run([promtool, "test", "rules", tests.name], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, f"{result.stdout}\n{result.stderr}"


def test_catalogue_names_follow_prometheus_conventions():
    units = ("_seconds", "_bytes", "_kelvin", "_celsius", "_ratio")
    for name, spec in METRICS.items():
        assert name == name.lower() and "__" not in name, name
        assert (spec.kind == "counter") == name.endswith("_total"), name  # _total for counters only
        if spec.kind in ("histogram", "summary"):  # measured quantities: a base unit in the name
            assert name.endswith(units), name
