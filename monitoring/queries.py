"""Every PromQL query edgeship uses, in one named table: alert rules, dashboards and tests.

Usage::

    from monitoring.queries import QUERIES, render

    render("canary_error_ratio")                               # all models, 5m window
    render("latency_p95", model="digits-cnn", window="10m")    # one model
    QUERIES["accuracy"].help                                   # what it measures

Templates use ``$name`` placeholders (:class:`string.Template`; PromQL itself never uses ``$``):
``$model``, ``$device_class``, ``$cohort``, ``$outcome`` and ``$reasons`` are values of regex
matchers (``model=~"$model"``), so ``.+`` means all and a Grafana variable such as ``$model``
can be passed through as it is; ``$window`` and ``$offset`` are durations (``5m``) or Grafana
interval variables (``$__rate_interval``); ``$le`` is a bound of the /metrics latency histogram
(``METRIC_BUCKETS_SECONDS`` of :mod:`edgeship.contract.latency`, spelled as the server prints
it: :data:`LE_VALUES`). The alert rules (:mod:`monitoring.alerts`) and the dashboards
(:mod:`monitoring.dashboards`) are generated from this table by ``python -m monitoring.build``.

Metrics are computed by the server from its database (docs/monitoring.md), so counters are fleet totals:
scrape one address (a replica or the load balancer), never every replica, or sums multiply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Template
from textwrap import indent

from edgeship.contract import reports
from edgeship.contract.latency import METRIC_BUCKETS_SECONDS
from edgeship.contract.reports import reasons_regex

#: error reasons of inference errors proper, as the rollout error-rate guard counts them by
#: default; load failures (``load_failed``, ``golden_mismatch``) are watched on their own.
INFERENCE_ERROR_REASONS = reasons_regex(reports.INFERENCE_ERROR_REASONS)
LOAD_FAILURE_REASONS = reasons_regex(reports.INSTALL_ERROR_REASONS)

#: placeholder values when a caller does not give them.
DEFAULT_PARAMS: dict[str, str] = {
    "model": ".+",
    "device_class": ".+",
    "cohort": ".+",
    "outcome": ".+",
    "reasons": INFERENCE_ERROR_REASONS,
    "window": "5m",
    "offset": "30m",
    "le": "0.1",
}
_DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$|^\$\{?__\w+\}?$")
_DURATION_PARAMS = frozenset({"window", "offset"})
#: the ``le`` values of the latency histogram as prometheus_client prints them (its
#: ``floatToGoString``, which is ``repr`` below 1e6 s): another spelling ("0.10") matches no series.
LE_VALUES: frozenset[str] = frozenset(repr(float(bound)) for bound in METRIC_BUCKETS_SECONDS)


@dataclass(frozen=True)
class Query:
    """One PromQL template and how to show its result.

    Attributes:
        template: PromQL with ``$name`` placeholders (see the module docstring).
        help: what the result means, for docs and panel descriptions.
        unit: Grafana unit of the result (``percentunit``, ``s``, ``ops``, ``short``).
        legend: Grafana legend format for its series (``{{cohort}}``).
    """

    template: str
    help: str
    unit: str = "short"
    legend: str = ""

    @property
    def params(self) -> frozenset[str]:
        """The placeholders the template uses."""
        return frozenset(m.group("named") or m.group("braced")
                         for m in Template.pattern.finditer(self.template)
                         if m.group("named") or m.group("braced"))


def _sel(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def _nested(expr: str) -> str:
    return indent(expr, "  ")


def _agg(op: str, by: str, inner: str) -> str:
    return f"{op} by ({by}) ({inner})" if by else f"{op}({inner})"


def _over(fn: str, metric: str, by: str, *matchers: str) -> str:
    """``sum by (by) (fn(metric{matchers}[$window]))``."""
    return _agg("sum", by, f"{fn}({_sel(metric, *matchers)}[$window])")


#: the server's active rollout phases (``Phase.active()`` in rollout_server.analysis, which
#: monitoring may not import): tests/monitoring/test_consistency.py checks they agree.
ACTIVE_ROLLOUT_PHASES: tuple[str, ...] = ("running", "paused", "awaiting_approval")

_MODEL = 'model=~"$model"'
_CLASS = 'device_class=~"$device_class"'
_COHORT = 'cohort=~"$cohort"'
_REASONS = 'reason=~"$reasons"'
_FLEET = (_MODEL, _COHORT, _CLASS)
_CANARY = (_MODEL, 'cohort="canary"', _CLASS)
_STABLE = (_MODEL, 'cohort="stable"', _CLASS)
_ACTIVE_PHASES = f'phase=~"{"|".join(ACTIVE_ROLLOUT_PHASES)}"'
_ROLLED_BACK = 'phase="rolled_back"'
_PAUSED = 'phase="paused"'
_RUNNING = 'phase="running"'
_LE = 'le="$le"'

_INFERENCES = "edgeship_inferences_total"
_ERRORS = "edgeship_inference_errors_total"
_BUCKETS = "edgeship_inference_latency_seconds_bucket"
_LATENCY_COUNT = "edgeship_inference_latency_seconds_count"


def _error_ratio(by: str, matchers: tuple[str, ...]) -> str:
    return (f"{_over('rate', _ERRORS, by, *matchers, _REASONS)}\n"
            f"/ {_over('rate', _INFERENCES, by, *matchers)}")


def _accuracy(by: str) -> str:
    return (f"{_over('rate', 'edgeship_eval_correct_total', by, *_FLEET)}\n"
            f"/ {_over('rate', 'edgeship_eval_samples_total', by, *_FLEET)}")


def _quantile(q: float, by: str, matchers: tuple[str, ...]) -> str:
    return f"histogram_quantile({q}, {_over('rate', _BUCKETS, by, *matchers)})"


def _mean(metric: str, by: str, matchers: tuple[str, ...]) -> str:
    """Mean of a per-report value (a catalogue summary) over the reports in the window that carried
    one: ``increase(_sum) / increase(_count)``; no series where none did (not 0, not NaN)."""
    return (f"{_over('increase', f'{metric}_sum', by, *matchers)}\n"
            f"/ ({_over('increase', f'{metric}_count', by, *matchers)} > 0)")


def _throttled_ratio(by: str, matchers: tuple[str, ...]) -> str:
    return (f"{_over('increase', 'edgeship_reports_throttled_total', by, *matchers)}\n"
            f"/ ({_over('increase', 'edgeship_reports_throttle_known_total', by, *matchers)} > 0)")


def _silent(cohort: str, share_condition: str) -> str:
    """Models with an active rollout whose ``cohort`` should have devices but sent no inferences."""
    reporting = _over("rate", _INFERENCES, "model", _MODEL, f'cohort="{cohort}"')
    return (
        "label_replace(\n"
        f"  (max by (model) (edgeship_rollout_canary_ratio{{{_MODEL}}}) {share_condition})\n"
        f"  and on (model) (max by (model) (edgeship_rollout_phase{{{_MODEL}, {_ACTIVE_PHASES}}}) == 1)\n"
        f"  unless on (model) ({reporting} > 0),\n"
        f'  "cohort", "{cohort}", "", "")'
    )


def _devices(offset: bool) -> str:
    return _agg("sum", "device_class",
                _sel("edgeship_active_devices", _CLASS) + (" offset $offset" if offset else ""))


#: the table. Names are stable: alert rules, dashboards and the lead's end-to-end tests use them.
QUERIES: dict[str, Query] = {
    # traffic
    "inferences_rate": Query(
        _over("rate", _INFERENCES, "model, cohort", *_FLEET),
        "Inferences per second reported by devices, per model and cohort.", "ops", "{{model}} {{cohort}}"),
    "inferences_increase": Query(
        _over("increase", _INFERENCES, "model, cohort", *_FLEET),
        "Inferences reported in the window, per model and cohort (minimum traffic for alerts).",
        "short", "{{model}} {{cohort}}"),
    "inferences_rate_by_device_class": Query(
        _over("rate", _INFERENCES, "device_class", *_FLEET),
        "Inferences per second per device class.", "ops", "{{device_class}}"),
    "fleet_inferences_rate": Query(
        _over("rate", _INFERENCES, "", *_FLEET), "Inferences per second, whole fleet.", "ops"),
    # errors
    "error_ratio": Query(
        _error_ratio("model, cohort", _FLEET),
        "Share of inferences that failed (reasons $reasons), per model and cohort.",
        "percentunit", "{{model}} {{cohort}}"),
    "canary_error_ratio": Query(
        _error_ratio("model", _CANARY), "Error ratio of the canary cohort, per model.", "percentunit",
        "{{model}} canary"),
    "stable_error_ratio": Query(
        _error_ratio("model", _STABLE), "Error ratio of the stable cohort, per model.", "percentunit",
        "{{model}} stable"),
    "error_ratio_difference": Query(
        f"(\n{_nested(_error_ratio('model', _CANARY))}\n)\n- (\n{_nested(_error_ratio('model', _STABLE))}\n)",
        "Canary error ratio minus stable error ratio, per model (positive: the canary fails more).",
        "percentunit", "{{model}}"),
    "error_ratio_by_model": Query(
        _error_ratio("model", _FLEET), "Error ratio per model, both cohorts.", "percentunit", "{{model}}"),
    "fleet_error_ratio": Query(
        _error_ratio("", _FLEET), "Error ratio of the whole fleet.", "percentunit"),
    "error_ratio_by_device_class": Query(
        _error_ratio("device_class, cohort", _FLEET), "Error ratio per device class and cohort.",
        "percentunit", "{{device_class}} {{cohort}}"),
    "errors_rate_by_reason": Query(
        _over("rate", _ERRORS, "cohort, reason", *_FLEET, _REASONS),
        "Errors per second by reason and cohort.", "ops", "{{cohort}} {{reason}}"),
    "errors_rate_by_device_class_and_reason": Query(
        _over("rate", _ERRORS, "device_class, reason", *_FLEET, _REASONS),
        "Errors per second by device class and reason.", "ops", "{{device_class}} {{reason}}"),
    # latency (histogram on METRIC_BUCKETS_SECONDS of edgeship.contract.latency: 100 µs to 10 s,
    # neighbours at most 10% apart, so histogram_quantile is within 10% of the true quantile)
    "latency_p50": Query(
        _quantile(0.5, "model, cohort, le", _FLEET), "Median on-device inference latency per cohort.",
        "s", "{{model}} {{cohort}} p50"),
    "latency_p95": Query(
        _quantile(0.95, "model, cohort, le", _FLEET), "95th percentile inference latency per cohort.",
        "s", "{{model}} {{cohort}} p95"),
    "latency_p95_ratio": Query(
        f"{_quantile(0.95, 'model, le', _CANARY)}\n/ {_quantile(0.95, 'model, le', _STABLE)}",
        "Canary p95 latency over stable p95 latency, per model (1.2 = 20% slower).", "short", "{{model}}"),
    "latency_p95_by_device_class": Query(
        _quantile(0.95, "device_class, cohort, le", _FLEET), "p95 latency per device class and cohort.",
        "s", "{{device_class}} {{cohort}}"),
    "latency_samples_increase": Query(
        _over("increase", _LATENCY_COUNT, "model, cohort", *_FLEET),
        "Latency samples in the window per model and cohort (minimum traffic for latency alerts).",
        "short", "{{model}} {{cohort}}"),
    "latency_under_le_ratio": Query(
        f"{_over('rate', _BUCKETS, 'model, cohort', *_FLEET, _LE)}\n"
        f"/ {_over('rate', _LATENCY_COUNT, 'model, cohort', *_FLEET)}",
        "Share of inferences at or under $le seconds, per model and cohort.", "percentunit",
        "{{model}} {{cohort}}"),
    "latency_buckets_increase": Query(
        _over("increase", _BUCKETS, "le", *_FLEET),
        "Inferences per latency bucket in each interval (heatmap).", "short", "{{le}}"),
    # accuracy on labelled and golden samples
    "accuracy": Query(
        _accuracy("model, cohort"), "Share of labelled or golden samples predicted right, per cohort.",
        "percentunit", "{{model}} {{cohort}}"),
    "accuracy_by_device_class": Query(
        _accuracy("device_class, cohort"), "Accuracy per device class and cohort.", "percentunit",
        "{{device_class}} {{cohort}}"),
    # device values the reports may carry (schema 2): means over the reports that carried them
    "peak_rss_mean_mib": Query(
        f"(\n{_nested(_mean('edgeship_report_peak_rss_bytes', 'model, cohort', _FLEET))}\n)\n/ 1048576",
        "Mean peak RSS of the agent process in MiB, per model and cohort, over the reports in the "
        "window that carried one (devices that cannot tell leave it out; those reports are not "
        "counted as 0).", "mbytes", "{{model}} {{cohort}}"),
    "load_seconds_mean": Query(
        _mean("edgeship_report_load_seconds", "model, cohort", _FLEET),
        "Mean model load time per model and cohort, over the reports in the window that carried "
        "one (reports without it are left out, not counted as 0).", "s", "{{model}} {{cohort}}"),
    "cpu_temperature_mean": Query(
        f"(\n{_nested(_mean('edgeship_report_cpu_temperature_kelvin', 'model, cohort', _FLEET))}\n)\n"
        "- 273.15",
        "Mean CPU temperature in degrees Celsius per model and cohort, over the reports in the "
        "window that carried one (devices without a thermal zone leave it out; those reports are "
        "not counted as 0).", "celsius", "{{model}} {{cohort}}"),
    "throttled_ratio": Query(
        _throttled_ratio("model, cohort", _FLEET),
        "Share of reports that said the CPU was throttled, per model and cohort, among the reports "
        "in the window that said whether it was (reports that could not tell are left out, not "
        "counted as unthrottled).", "percentunit", "{{model}} {{cohort}}"),
    # rollouts
    "canary_share": Query(
        f"max by (model) ({_sel('edgeship_rollout_canary_ratio', _MODEL)})",
        "Share of devices in the canary cohort of the model's active rollout (0 when none).",
        "percentunit", "{{model}}"),
    "rollout_phase": Query(
        f"max by (model, phase) ({_sel('edgeship_rollout_phase', _MODEL)}) == 1",
        "The phase the model's latest rollout is in (one series, value 1).", "short", "{{phase}}"),
    "active_rollouts": Query(
        f"count(max by (model) ({_sel('edgeship_rollout_phase', _MODEL, _ACTIVE_PHASES)}) == 1)"
        " or vector(0)",
        "Rollouts running or paused.", "short"),
    "rollbacks_increase": Query(
        _over("increase", "edgeship_rollbacks_total", "model", _MODEL),
        "Automatic rollbacks in the window, per model.", "short", "{{model}}"),
    "rollbacks_recent": Query(
        f"(\n  {_over('increase', 'edgeship_rollbacks_total', 'model', _MODEL)} > 0\n)\nor (\n"
        f"  max by (model) (changes({_sel('edgeship_rollout_phase', _MODEL, _ROLLED_BACK)}"
        "[$window])) > 0\n"
        f"  and on (model) max by (model) ({_sel('edgeship_rollout_phase', _MODEL, _ROLLED_BACK)})"
        " == 1\n)",
        "Models with a rollback in the window. The phase change also catches a model's first "
        "rollback, whose counter series is new and so shows no increase.", "short", "{{model}}"),
    "rollouts_paused": Query(
        f"max by (model) ({_sel('edgeship_rollout_phase', _MODEL, _PAUSED)}) == 1",
        "Models whose latest rollout is paused (by an operator, or by the controller after repeated "
        "analysis errors): its canary devices stay on the candidate until someone acts.",
        "short", "{{model}}"),
    "rollouts_unchanged": Query(
        f"max by (model) ({_sel('edgeship_rollout_phase', _MODEL, _RUNNING)}) == 1\n"
        f"and on (model)\nmax by (model) (changes({_sel('edgeship_rollout_canary_ratio', _MODEL)}"
        "[$window])) == 0\n"
        f"unless on (model)\nmax by (model) ({_sel('edgeship_rollout_schedule_held', _MODEL)}) == 1",
        "Running rollouts whose canary share did not change in the window (holding their stage), "
        "unless their schedule holds them now.",
        "short", "{{model}}"),
    "silent_cohorts": Query(
        f"{_silent('canary', '> 0')}\nor\n{_silent('stable', '< 1')}",
        "Cohorts of an active rollout that should have devices but reported no inferences in the window.",
        "short", "{{model}} {{cohort}}"),
    # reports and the server
    "reports_rate": Query(
        _over("rate", "edgeship_reports_total", "outcome", 'outcome=~"$outcome"'),
        "Report requests per second by outcome (accepted and duplicate count reports; rejected "
        "counts refused batches).", "ops", "{{outcome}}"),
    "reports_increase": Query(
        _over("increase", "edgeship_reports_total", "outcome", 'outcome=~"$outcome"'),
        "Reports in the window by outcome.", "short", "{{outcome}}"),
    "controller_errors_increase": Query(
        _over("increase", "edgeship_controller_errors_total", "reason", 'reason=~".+"'),
        "Rollout controller errors in the window by reason (failed passes, analysis windows that "
        "ended in an error verdict).", "short", "{{reason}}"),
    # rollout notifications
    "webhook_deliveries_retrying": Query(
        _agg("sum", "", _sel("edgeship_webhook_deliveries_pending", 'state="retrying"')),
        "Webhook deliveries that failed at least once and are waiting for their next attempt.", "short",
        "retrying"),
    "webhook_deliveries_increase": Query(
        _over("increase", "edgeship_webhook_deliveries_total", "outcome", 'outcome=~"$outcome"'),
        "Webhook delivery attempts in the window by outcome (delivered, retried, gave_up).", "short",
        "{{outcome}}"),
    # the perimeter: per-client limits
    "rate_limited_increase": Query(
        _over("increase", "edgeship_rate_limited_total", "route_group, reason", 'reason=~".+"'),
        "Requests refused 429 by the per-client limits in the window, by route group and reason "
        "(registration_rate, auth_failures).", "short", "{{route_group}} {{reason}}"),
    "rate_limited_rate": Query(
        _over("rate", "edgeship_rate_limited_total", "route_group, reason", 'reason=~".+"'),
        "Requests refused 429 per second, by route group and reason.", "reqps",
        "429 {{route_group}} {{reason}}"),
    "auth_failures_rate": Query(
        _over("rate", "edgeship_auth_failures_total", "reason", 'reason=~".+"'),
        "Requests answered 401 per second, by the credential that failed.", "reqps", "401 {{reason}}"),
    # devices
    "active_devices": Query(
        _devices(offset=False), "Devices that checked in within the last 5 minutes, per device class.",
        "short", "{{device_class}}"),
    "active_devices_total": Query(
        f"sum({_sel('edgeship_active_devices', _CLASS)})", "Devices that checked in recently, whole fleet.",
        "short"),
    "active_devices_before": Query(
        _devices(offset=True), "Active devices per device class $offset ago.", "short", "{{device_class}}"),
    "active_devices_drop": Query(
        f"1 - (\n  {_devices(offset=False)}\n  or {_devices(offset=True)} * 0\n)\n/ {_devices(offset=True)}",
        "Share of each device class's active devices lost since $offset ago (1: all gone).",
        "percentunit", "{{device_class}}"),
}


def render(name: str, **params: str | float) -> str:
    """The PromQL of query ``name`` with its placeholders filled.

    Args:
        name: a key of :data:`QUERIES`.
        **params: placeholder values; missing ones come from :data:`DEFAULT_PARAMS`.

    Returns:
        The PromQL text.

    Raises:
        ValueError: unknown query or parameter, or a value that would break the query.
    """
    if name not in QUERIES:
        raise ValueError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown query parameters {sorted(unknown)} for {name!r}")
    values = {**DEFAULT_PARAMS, **{key: _check(key, str(value)) for key, value in params.items()}}
    return Template(QUERIES[name].template).substitute(values)


def _check(key: str, value: str) -> str:
    if key in _DURATION_PARAMS and not _DURATION.match(value):
        raise ValueError(f"{key} must be a duration like 5m or a Grafana interval variable, got {value!r}")
    if key == "le" and value not in LE_VALUES:
        raise ValueError("le must be a bound of METRIC_BUCKETS_SECONDS (edgeship.contract.latency) spelled "
                         f"as the server prints it (0.1, 0.00025, 1.0), got {value!r}")
    if any(c in value for c in '"\n\\') and key not in _DURATION_PARAMS:
        raise ValueError(f"{key} must not contain quotes, backslashes or newlines, got {value!r}")
    return value
