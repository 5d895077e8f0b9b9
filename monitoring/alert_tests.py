"""The promtool unit tests of the alert rules (``monitoring/prometheus/alerts_test.yml``).

Usage::

    promtool test rules monitoring/prometheus/alerts_test.yml    # after python -m monitoring.build

Each alert has a test where it fires (series shaped like the server's ``/metrics``: the
catalogue's labels, the latency histogram on every bound of ``METRIC_BUCKETS_SECONDS``
(``edgeship.contract.latency``) spelled as the server prints it) beside look-alike series that
must not fire, and one healthy fleet with an active rollout on which no alert fires at all. Expected
annotations are the rules' own templates with the labels and the formatted value filled in,
so a templating mistake fails the test.
"""

from __future__ import annotations

import math
import re
from typing import Any

from edgeship.contract.latency import METRIC_BUCKETS_SECONDS
from monitoring.alerts import ALERTS
from monitoring.yaml_text import to_yaml

MINUTES = 60
_RULES = {alert.name: alert for alert in ALERTS}


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    text = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def _counter(per_minute: float, minutes: int = MINUTES) -> str:
    return f"0+{per_minute:g}x{minutes}"


def _fleet(model: str, cohort: str, device_class: str = "rpi4") -> dict[str, str]:
    return {"model": model, "variant": "tflite-int8", "cohort": cohort, "device_class": device_class}


def _traffic(model: str, cohort: str, per_minute: int, errors: int = 0, reason: str = "runtime_error",
             **extra_errors: int) -> list[dict[str, str]]:
    """Inference and error counters of one cohort, growing linearly for an hour."""
    labels = _fleet(model, cohort)
    series = [_series("edgeship_inferences_total", _counter(per_minute), **labels),
              _series("edgeship_inference_errors_total", _counter(errors), **labels, reason=reason)]
    series += [_series("edgeship_inference_errors_total", _counter(count), **labels, reason=other)
               for other, count in extra_errors.items()]
    return series


def _latency(model: str, cohort: str, le: float, per_minute: int) -> list[dict[str, str]]:
    """A latency histogram whose every sample falls in the bucket of upper bound ``le`` (a bound of
    ``METRIC_BUCKETS_SECONDS``): its p95 reads 95% of the way from the bound below to ``le``."""
    if le not in METRIC_BUCKETS_SECONDS:
        raise ValueError(f"{le!r} is not a bound of METRIC_BUCKETS_SECONDS")
    labels = _fleet(model, cohort)
    bounds = [*METRIC_BUCKETS_SECONDS, math.inf]
    series = [_series("edgeship_inference_latency_seconds_bucket", _counter(per_minute if bound >= le else 0),
                      **labels, le=_le(bound))
              for bound in bounds]
    series.append(_series("edgeship_inference_latency_seconds_count", _counter(per_minute), **labels))
    return series


def _le(bound: float) -> str:
    """``bound`` as prometheus_client prints it (``floatToGoString``: ``repr``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _rollout(model: str, phase: str, canary_ratio: float, phases: str | None = None, minutes: int = MINUTES,
             ratios: str | None = None) -> list[dict[str, str]]:
    """Phase gauges (1 for ``phase``, or the values ``phases``) and the canary share (constant, or
    the values ``ratios``) of a model's latest rollout, over ``minutes``."""
    series = [_series("edgeship_rollout_phase", phases if name == phase and phases else
                      f"{1 if name == phase else 0}x{minutes}", model=model, phase=name)
              for name in ("pending", "running", "paused", "promoted", "rolled_back", "aborted")]
    ratio = ratios or f"{canary_ratio:g}x{minutes}"
    series.append(_series("edgeship_rollout_canary_ratio", ratio, model=model))
    return series


def expect(name: str, value: str = "", **labels: str) -> dict[str, Any]:
    """An expected firing alert: its labels and its annotations with labels and value filled in."""
    rule = _RULES[name]

    def fill(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return re.sub(r"\{\{ \$value[^}]*\}\}", value, text)

    annotations = rule.to_dict()["annotations"]
    return {"exp_labels": {"severity": rule.severity, **labels},
            "exp_annotations": {key: fill(text) for key, text in annotations.items()}}


def _check(eval_time: str, name: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": list(alerts)}


def _healthy_fleet() -> list[dict[str, str]]:
    """A rollout at 10% with both cohorts alike, steady devices, accepted reports only."""
    return [
        *_traffic("digits-cnn", "stable", 9000, errors=90, load_failed=1),
        *_traffic("digits-cnn", "canary", 1000, errors=10),
        *_latency("digits-cnn", "stable", 0.01, 9000),
        *_latency("digits-cnn", "canary", 0.01, 1000),
        *_rollout("digits-cnn", "running", 0.1),
        _series("edgeship_rollbacks_total", f"1x{MINUTES}", model="digits-cnn"),
        _series("edgeship_reports_total", _counter(300), outcome="accepted"),
        _series("edgeship_reports_total", _counter(1), outcome="duplicate"),
        _series("edgeship_reports_total", f"0x{MINUTES}", outcome="rejected"),
        _series("edgeship_controller_errors_total", f"0x{MINUTES}", reason="pass_failed"),
        _series("edgeship_active_devices", f"100x{MINUTES}", device_class="rpi4"),
    ]


def _case(name: str, series: list[dict[str, str]], *checks: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "interval": "1m", "input_series": series, "alert_rule_test": list(checks)}


def promtool_cases() -> list[dict[str, Any]]:
    """Every promtool test case, in the file's order."""
    error = "EdgeshipCanaryErrorRatioAboveStable"
    latency = "EdgeshipCanaryLatencyRegression"
    rollback = "EdgeshipRolloutRolledBack"
    silent = "EdgeshipCohortSilent"
    paused = "EdgeshipRolloutPaused"
    stalled = "EdgeshipRolloutStalled"
    day = 8 * 60  # minutes of series for the stalled case (the alert needs 6h of holding)
    rejected = "EdgeshipReportsRejected"
    controller = "EdgeshipControllerErrors"
    devices = "EdgeshipFleetDevicesDropping"
    limited = "EdgeshipClientsRateLimited"
    webhooks = "EdgeshipWebhookDeliveriesFailing"
    return [
        _case("a healthy fleet with an active rollout fires nothing", _healthy_fleet(),
              *(_check(at, alert.name) for alert in ALERTS for at in ("15m", "45m"))),
        _case("canary error ratio: 5% against 1% fires; equal ratios (load failures aside) and thin "
              "traffic do not",
              [*_traffic("digits-cnn", "canary", 1000, errors=50),
               *_traffic("digits-cnn", "stable", 9000, errors=90),
               *_traffic("healthy-net", "canary", 2000, errors=20, load_failed=200),
               *_traffic("healthy-net", "stable", 18000, errors=180),
               *_traffic("sparse-net", "canary", 50, errors=10),
               *_traffic("sparse-net", "stable", 5000, errors=50)],
              _check("5m", error),  # pending: the condition must hold 10m
              _check("25m", error, expect(error, "4%", model="digits-cnn"))),
        _case("canary p95 latency: 2.5x stable fires, so does 1.3x under a millisecond (one v1 bucket); "
              "equal latency, 1.1x and thin traffic do not",
              [*_latency("digits-cnn", "canary", 0.025, 1000), *_latency("digits-cnn", "stable", 0.01, 9000),
               *_latency("fast-net", "canary", 0.00065, 1000), *_latency("fast-net", "stable", 0.0005, 9000),
               *_latency("healthy-net", "canary", 0.01, 1000), *_latency("healthy-net", "stable", 0.01, 9000),
               *_latency("close-net", "canary", 0.0022, 1000), *_latency("close-net", "stable", 0.002, 9000),
               *_latency("sparse-net", "canary", 0.1, 30), *_latency("sparse-net", "stable", 0.01, 9000)],
              _check("5m", latency),
              _check("25m", latency, expect(latency, "2.50", model="digits-cnn"),
                     expect(latency, "1.30", model="fast-net"))),
        _case("rollback: the counter grows, or a model's first rollback flips its phase; old ones "
              "do not fire",
              [_series("edgeship_rollbacks_total", "1x20 2x40", model="counter-net"),
               *_rollout("counter-net", "rolled_back", 0.0),
               _series("edgeship_rollbacks_total", "_x21 1x39", model="first-net"),
               *_rollout("first-net", "rolled_back", 0.0, phases="0x20 1x40"),
               _series("edgeship_rollbacks_total", f"1x{MINUTES}", model="steady-net"),
               *_rollout("steady-net", "rolled_back", 0.0)],
              _check("15m", rollback),
              _check("25m", rollback, expect(rollback, model="counter-net"),
                     expect(rollback, model="first-net")),
              _check("45m", rollback)),
        _case("silent cohort: a canary that stopped and one that never reported; others are fine",
              [*_rollout("digits-cnn", "running", 0.1), *_traffic("digits-cnn", "stable", 900),
               _series("edgeship_inferences_total", "0+100x10 1000x50", **_fleet("digits-cnn", "canary")),
               *_rollout("new-net", "running", 0.1), *_traffic("new-net", "stable", 900),
               *_rollout("healthy-net", "running", 0.5), *_traffic("healthy-net", "stable", 500),
               *_traffic("healthy-net", "canary", 500),
               *_rollout("full-net", "running", 1.0), *_traffic("full-net", "canary", 500),
               *_rollout("done-net", "promoted", 0.0)],
              _check("5m", silent),
              _check("40m", silent, expect(silent, model="digits-cnn", cohort="canary"),
                     expect(silent, model="new-net", cohort="canary"))),
        _case("paused: a paused rollout fires after 5m; running, rolled back and resumed ones do not",
              [*_rollout("paused-net", "paused", 0.1),
               *_rollout("resumed-net", "running", 0.1, phases="0x10 1x50"),
               *_rollout("running-net", "running", 0.1),
               *_rollout("done-net", "rolled_back", 0.0)],
              _check("3m", paused),
              _check("20m", paused, expect(paused, model="paused-net"))),
        _case("stalled: a rollout holding one stage for 6h fires; one that advanced 2h ago, one its "
              "schedule holds (overnight), a paused one and a promoted one do not",
              [*_rollout("held-net", "running", 0.1, minutes=day),
               *_rollout("moving-net", "running", 0.1, minutes=day, ratios=f"0.1x{day - 120} 0.5x120"),
               *_rollout("overnight-net", "running", 0.1, minutes=day),
               _series("edgeship_rollout_schedule_held", f"1x{day}", model="overnight-net"),
               _series("edgeship_rollout_schedule_held", f"0x{day}", model="held-net"),
               *_rollout("paused-net", "paused", 0.1, minutes=day),
               *_rollout("done-net", "promoted", 0.0, minutes=day)],
              _check("5h", stalled),
              _check("7h30m", stalled, expect(stalled, model="held-net"))),
        _case("rejected reports: 20 in 10m fires, 5 in all does not",
              [_series("edgeship_reports_total", _counter(300), outcome="accepted"),
               _series("edgeship_reports_total", _counter(2), outcome="rejected")],
              _check("3m", rejected),
              _check("20m", rejected, expect(rejected, "20", outcome="rejected"))),
        _case("rejected reports: a few refused batches do not fire",
              [_series("edgeship_reports_total", "0x20 5x40", outcome="rejected")],
              _check("25m", rejected)),
        _case("controller errors: a failing pass every minute fires, one analysis error does not",
              [_series("edgeship_controller_errors_total", _counter(1), reason="pass_failed"),
               _series("edgeship_controller_errors_total", "0x20 1x40", reason="analysis_error")],
              _check("30m", controller, expect(controller, "15", reason="pass_failed"))),
        _case("rate limited: a locked-out client knocking every few seconds fires; a short burst does not",
              [_series("edgeship_rate_limited_total", _counter(5), route_group="operator",
                       reason="auth_failures"),
               _series("edgeship_rate_limited_total", "0x20 10x40", route_group="register",
                       reason="registration_rate"),
               _series("edgeship_rate_limited_total", f"0x{MINUTES}", route_group="device",
                       reason="auth_failures")],
              _check("3m", limited),
              _check("30m", limited, expect(limited, "75", route_group="operator", reason="auth_failures"))),
        _case("webhooks: deliveries retrying for 30m fire; a failure retried within minutes does not",
              [_series("edgeship_webhook_deliveries_pending", "0x10 2x50", state="retrying"),
               _series("edgeship_webhook_deliveries_pending", "0x10 1x3 0x47", state="queued")],
              _check("30m", webhooks),
              _check("50m", webhooks, expect(webhooks, "2"))),
        _case("webhooks: a short failure that the next attempt fixes does not fire",
              [_series("edgeship_webhook_deliveries_pending", "0x10 1x5 0x45", state="retrying")],
              _check("40m", webhooks)),
        _case("fleet devices: a halved class and a vanished class fire; small and steady classes do not",
              [_series("edgeship_active_devices", "100x30 50x30", device_class="rpi4"),
               _series("edgeship_active_devices", "100x30 stale", device_class="android"),
               _series("edgeship_active_devices", "4x30 1x30", device_class="ios"),
               _series("edgeship_active_devices", "40x30 38x30", device_class="rpi5")],
              _check("20m", devices),
              _check("50m", devices, expect(devices, "100%", device_class="android"),
                     expect(devices, "50%", device_class="rpi4"))),
    ]


def alert_tests_yaml(rule_file: str = "alerts.yml") -> str:
    """The text of ``monitoring/prometheus/alerts_test.yml`` (rule path relative to it)."""
    document = {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": promtool_cases()}
    return ("# Generated by `python -m monitoring.build` from monitoring/alert_tests.py: do not edit.\n"
            + to_yaml(document))


def covered(cases: list[dict[str, Any]] | None = None) -> dict[str, tuple[bool, bool]]:
    """Per alert: (has a check where it fires, has a check where it must not)."""
    result = {name: (False, False) for name in _RULES}
    for case in cases if cases is not None else promtool_cases():
        for check in case["alert_rule_test"]:
            fires, quiet = result[check["alertname"]]
            firing = bool(check["exp_alerts"])
            result[check["alertname"]] = (fires or firing, quiet or not firing)
    return result

