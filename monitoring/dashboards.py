"""The three edgeship dashboards and their Grafana provisioning, as code.

Usage::

    from monitoring.dashboards import DASHBOARDS
    boards = [build() for build in DASHBOARDS]    # Grafana JSON models

``python -m monitoring.build`` writes them to ``monitoring/grafana/dashboards/<uid>.json``.
Panel by panel descriptions: docs/monitoring.md.
"""

from __future__ import annotations

from typing import Any

from monitoring.alerts import DEVICES_OFFSET, LATENCY_P95_RATIO, ROLLOUT_WINDOW
from monitoring.grafana import Panel, Target, dashboard, query_variable, stat
from monitoring.queries import LOAD_FAILURE_REASONS

DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
DEFAULT_DASHBOARDS_PATH = "/var/lib/grafana/dashboards/edgeship"
ALL_REASONS = {"reasons": ".+"}
OVER_RANGE = {"window": "$__range"}


def _t(query: str, legend: str | None = None, **params: str) -> Target:
    return Target(query, params, legend)


def _device_value(what: str, field: str) -> str:
    """The description of a panel showing the mean of an optional report value."""
    return (f"{what}: the mean over the reports that carried it (field {field}), by cohort. Devices "
            "that cannot tell leave the field out, and those reports are left out of the mean, not "
            "counted as zero. No line where no report in the interval carried it.")


def fleet_overview() -> dict[str, Any]:
    """The whole fleet: devices, traffic, errors, reports and every model's rollout."""
    return dashboard(
        uid="edgeship-fleet",
        title="edgeship / Fleet overview",
        description="The whole fleet: active devices, inferences, errors, reports and rollouts per model.",
        variables=[],
        params={"model": ".+", "device_class": ".+"},
        panels=[
            stat("Active devices", _t("active_devices_total")),
            stat("Inferences per second", _t("fleet_inferences_rate")),
            stat("Error ratio", _t("fleet_error_ratio"),
                 thresholds=((None, "green"), (0.01, "orange"), (0.05, "red"))),
            stat("Rollouts in progress", _t("active_rollouts")),
            Panel("Active devices by device class", (_t("active_devices"),)),
            Panel("Inferences per second by device class", (_t("inferences_rate_by_device_class"),)),
            Panel("Error ratio by model", (_t("error_ratio_by_model"),)),
            Panel("Reports by outcome", (_t("reports_rate"),)),
            Panel("Canary share by model", (_t("canary_share"),)),
            stat("Rollout phase by model", _t("rollout_phase", "{{model}}: {{phase}}"), width=12,
                 text_mode="name"),
            Panel("Cohorts without reports", (_t("silent_cohorts", window=ROLLOUT_WINDOW),),
                  kind="table", width=8),
            stat("Rollbacks in the time range", _t("rollbacks_increase", **OVER_RANGE), width=8,
                 text_mode="value_and_name", thresholds=((None, "green"), (1, "red"))),
            Panel("Controller errors", (_t("controller_errors_increase", **OVER_RANGE),), kind="stat",
                  width=8, height=8, text_mode="value_and_name",
                  thresholds=((None, "green"), (1, "red"))),
            Panel("Refused (429) and failed (401) requests",
                  (_t("rate_limited_rate"), _t("auth_failures_rate")),
                  description="Requests the per-client limits refused (429, by route group and reason) "
                              "and requests answered 401 (by the credential that failed). An address "
                              "with too many 401s is locked out: docs/rollout-server.md."),
        ],
    )


def rollout() -> dict[str, Any]:
    """One model's rollout: canary against stable on every guard the controller uses."""
    return dashboard(
        uid="edgeship-rollout",
        title="edgeship / Rollout",
        description="One model's rollout: the canary cohort against the stable cohort.",
        variables=[query_variable("model", "Model", "edgeship_rollout_phase")],
        params={"model": "$model", "device_class": ".+"},
        panels=[
            stat("Phase", _t("rollout_phase"), text_mode="name"),
            stat("Canary share", _t("canary_share")),
            stat("Error ratio, canary minus stable", _t("error_ratio_difference"),
                 thresholds=((None, "green"), (0.001, "orange"), (0.01, "red"))),
            stat("p95 latency, canary over stable", _t("latency_p95_ratio"),
                 thresholds=((None, "green"), (LATENCY_P95_RATIO, "red"))),
            Panel("Canary share over time", (_t("canary_share"),)),
            Panel("Inferences per second by cohort", (_t("inferences_rate", "{{cohort}}"),)),
            Panel("Error ratio by cohort", (_t("error_ratio", "{{cohort}}"),)),
            Panel("Errors per second by reason", (_t("errors_rate_by_reason", **ALL_REASONS),)),
            Panel("Latency p50 and p95 by cohort", (_t("latency_p50", "{{cohort}} p50"),
                                                     _t("latency_p95", "{{cohort}} p95")),
                  description="Median and 95th percentile on-device inference latency per cohort, "
                              "from the merged histograms (edgeship.contract.latency)."),
            Panel("p95 latency ratio, canary over stable", (_t("latency_p95_ratio"),)),
            Panel("Accuracy by cohort", (_t("accuracy", "{{cohort}}"),)),
            Panel("Share of inferences at or under 100 ms", (_t("latency_under_le_ratio", "{{cohort}}"),)),
            Panel("Load and golden-check failures per second",
                  (_t("errors_rate_by_reason", reasons=LOAD_FAILURE_REASONS),),
                  description="Models that failed to load or failed their golden check on devices, per "
                              "second by cohort (the load-failure guard's input)."),
            Panel("Latency distribution (canary)", (_t("latency_buckets_increase", cohort="canary"),),
                  kind="heatmap"),
            Panel("Mean peak RSS by cohort", (_t("peak_rss_mean_mib", "{{cohort}}"),),
                  description=_device_value("Peak RSS of the agent process, in MiB", "peak_rss_bytes")),
            Panel("Mean model load time by cohort", (_t("load_seconds_mean", "{{cohort}}"),),
                  description=_device_value("Time to load the model on the device", "load_seconds")),
            Panel("Mean CPU temperature by cohort", (_t("cpu_temperature_mean", "{{cohort}}"),),
                  description=_device_value("CPU temperature at the report window's close, in °C",
                                            "cpu_temp_celsius")),
            Panel("Share of reports throttled by cohort", (_t("throttled_ratio", "{{cohort}}"),),
                  description="Reports that said the CPU was throttled at the window's close, over the "
                              "reports that said whether it was (field throttled), by cohort. Reports "
                              "without the field (no vcgencmd on the device) are left out: absent is "
                              "not false. No line where no report in the interval said."),
            stat("Rollbacks in the time range", _t("rollbacks_increase", **OVER_RANGE), width=24,
                 thresholds=((None, "green"), (1, "red"))),
        ],
    )


def device_class() -> dict[str, Any]:
    """Per device class: devices, traffic, errors, latency and accuracy by cohort."""
    return dashboard(
        uid="edgeship-device-class",
        title="edgeship / Device class",
        description="Devices, traffic, errors, latency and accuracy per device class and cohort.",
        variables=[query_variable("device_class", "Device class", "edgeship_active_devices", multi=True),
                   query_variable("model", "Model", "edgeship_inferences_total", multi=True)],
        params={"model": "$model", "device_class": "$device_class"},
        panels=[
            Panel("Active devices", (_t("active_devices"),)),
            Panel("Inferences per second", (_t("inferences_rate_by_device_class"),)),
            Panel("Error ratio by cohort", (_t("error_ratio_by_device_class"),)),
            Panel("Errors per second by reason",
                  (_t("errors_rate_by_device_class_and_reason", **ALL_REASONS),)),
            Panel("p95 latency by cohort", (_t("latency_p95_by_device_class"),)),
            Panel("Accuracy by cohort", (_t("accuracy_by_device_class"),)),
            Panel(f"Active devices lost since {DEVICES_OFFSET} ago",
                  (_t("active_devices_drop", offset=DEVICES_OFFSET),), width=24),
        ],
    )


#: the dashboards, each a function returning its JSON model.
DASHBOARDS = (fleet_overview, rollout, device_class)


def datasource_provisioning(url: str = DEFAULT_PROMETHEUS_URL) -> dict[str, Any]:
    """``provisioning/datasources``: a Prometheus data source at ``url``."""
    return {"apiVersion": 1, "datasources": [{
        "name": "edgeship Prometheus", "uid": "edgeship-prometheus", "type": "prometheus",
        "access": "proxy", "url": url, "isDefault": True, "editable": False,
        "jsonData": {"timeInterval": "15s"},
    }]}


def dashboard_provisioning(path: str = DEFAULT_DASHBOARDS_PATH) -> dict[str, Any]:
    """``provisioning/dashboards``: load the dashboards' JSON files from ``path`` into folder edgeship."""
    return {"apiVersion": 1, "providers": [{
        "name": "edgeship", "folder": "edgeship", "type": "file", "disableDeletion": False,
        "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": path, "foldersFromFilesStructure": False},
    }]}
