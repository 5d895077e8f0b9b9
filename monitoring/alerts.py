"""Prometheus alert rules, built from the query table (:mod:`monitoring.queries`).

Usage::

    from monitoring.alerts import ALERTS, rules_yaml

    rules_yaml()        # the text of monitoring/prometheus/alerts.yml (python -m monitoring.build)

Alerts are for people. Rollout decisions are made by the server's controller from its
database (docs/monitoring.md), not from these rules: an alert on a canary says the controller should
be acting (or is holding for lack of samples), and an operator should look. What each alert
means and what to do: docs/monitoring.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from textwrap import indent
from typing import Any

from monitoring.queries import render
from monitoring.yaml_text import to_yaml

#: canary error ratio over stable's that alerts (absolute; 0.01 = one percentage point). Larger
#: than the error-rate guard's margin: it should fire only when the controller has not acted.
ERROR_RATIO_MARGIN = 0.01
#: inferences each cohort needs in the window before the error ratio is compared.
ERROR_MIN_INFERENCES = 1000
#: canary p95 over stable p95 that alerts (the latency guard's default limit).
LATENCY_P95_RATIO = 1.2
#: latency samples each cohort needs in the window before p95 is compared.
LATENCY_MIN_SAMPLES = 500
#: window of the canary comparisons and of "no reports".
ROLLOUT_WINDOW = "10m"
#: how long a running rollout may hold one stage before it alerts (conditions evaluated on
#: ``STALLED_WINDOW`` of share history, for ``STALLED_FOR``: a Prometheus younger than that
#: cannot fire it).
STALLED_WINDOW = "1h"
STALLED_FOR = "6h"
#: refused report batches in the window that alert.
REJECTED_REPORTS = 10
#: controller errors in the window that alert (a single transient failure does not).
CONTROLLER_ERRORS = 3
#: requests refused 429 by the per-client limits in ``RATE_LIMITED_WINDOW`` that alert (a client
#: that keeps knocking while locked out; one burst of a few refusals does not).
RATE_LIMITED_REQUESTS = 30
RATE_LIMITED_WINDOW = "15m"
#: how long webhook deliveries may keep failing before it alerts (a receiver that is down: the
#: retries of one delivery span about an hour before it is given up).
WEBHOOKS_FAILING_FOR = "30m"
#: share of a device class's active devices lost since ``DEVICES_OFFSET`` ago that alerts.
DEVICES_DROP = 0.25
DEVICES_OFFSET = "30m"
#: device classes smaller than this (``DEVICES_OFFSET`` ago) are too small to alert on.
DEVICES_MIN = 5


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule.

    Attributes:
        name: the alert name (CamelCase, ``Edgeship`` prefix).
        group: the rule group it belongs to.
        expr: the PromQL condition; every series it returns is an alert.
        for_: how long the condition must hold before firing (``0m``: at once).
        severity: ``critical`` (act now) or ``warning`` (look today).
        summary: one line, with ``{{ $labels.x }}`` templating.
        description: what happened and what to do first.
    """

    name: str
    group: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def to_dict(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook": f"docs/monitoring.md#{self.name.lower()}",
        }
        return rule


def _min_per_model(query: str, **params: str) -> str:
    """The smaller of the two cohorts' values per model (a missing cohort gives no result)."""
    return f"min by (model) (\n{_nested(render(query, cohort='canary|stable', **params))}\n)"


def _nested(expr: str) -> str:
    return indent(expr, "  ")


ALERTS: tuple[AlertRule, ...] = (
    AlertRule(
        name="EdgeshipCanaryErrorRatioAboveStable",
        group="edgeship-rollouts",
        expr=(f"(\n{_nested(render('error_ratio_difference', window=ROLLOUT_WINDOW))}\n)"
              f" > {ERROR_RATIO_MARGIN}\n"
              f"and on (model)\n{_min_per_model('inferences_increase', window=ROLLOUT_WINDOW)}"
              f" >= {ERROR_MIN_INFERENCES}"),
        for_="10m",
        severity="critical",
        summary="Canary of {{ $labels.model }} fails more than stable",
        description=(
            "The canary error ratio of {{ $labels.model }} is {{ $value | humanizePercentage }} above "
            "the stable cohort's over the last 10m (both cohorts with enough traffic). The controller "
            "should roll it back: check `edgeship rollout status` for its verdicts; abort the rollout "
            "if it is holding."),
    ),
    AlertRule(
        name="EdgeshipCanaryLatencyRegression",
        group="edgeship-rollouts",
        expr=(f"(\n{_nested(render('latency_p95_ratio', window=ROLLOUT_WINDOW))}\n) > {LATENCY_P95_RATIO}\n"
              f"and on (model)\n{_min_per_model('latency_samples_increase', window=ROLLOUT_WINDOW)}"
              f" >= {LATENCY_MIN_SAMPLES}"),
        for_="10m",
        severity="warning",
        summary="Canary of {{ $labels.model }} is slower than stable (p95)",
        description=(
            "The canary p95 inference latency of {{ $labels.model }} is {{ $value | printf \"%.2f\" }} "
            "times the stable cohort's over the last 10m. Check the latency panels per device class: "
            "a variant chosen for one class is often the cause."),
    ),
    AlertRule(
        name="EdgeshipRolloutRolledBack",
        group="edgeship-rollouts",
        expr=render("rollbacks_recent", window=ROLLOUT_WINDOW),
        for_="0m",
        severity="warning",
        summary="Rollout of {{ $labels.model }} was rolled back",
        description=(
            "The controller rolled back the latest rollout of {{ $labels.model }}: every device gets the "
            "stable release at its next check-in. The reason is in `edgeship rollout status` and the "
            "audit log; fix the candidate before starting a new rollout."),
    ),
    AlertRule(
        name="EdgeshipRolloutPaused",
        group="edgeship-rollouts",
        expr=render("rollouts_paused"),
        for_="5m",
        severity="warning",
        summary="Rollout of {{ $labels.model }} is paused",
        description=(
            "The latest rollout of {{ $labels.model }} is paused: its canary devices keep the candidate "
            "and nothing advances until an operator resumes, promotes or aborts it (a fail still rolls "
            "it back). The controller pauses after repeated analysis errors; `edgeship rollout status` "
            "shows the reason."),
    ),
    AlertRule(
        name="EdgeshipRolloutStalled",
        group="edgeship-rollouts",
        expr=render("rollouts_unchanged", window=STALLED_WINDOW),
        for_=STALLED_FOR,
        severity="warning",
        summary="Rollout of {{ $labels.model }} has held its stage for 6h",
        description=(
            "The running rollout of {{ $labels.model }} has not changed its canary share for 6h. Its "
            "verdicts say why: too few samples (a small or idle canary cohort), or a guard that is "
            "inconclusive (a regression observed but not significant, e.g. errors clustered on a few "
            "devices). Decide: abort, promote by hand, or widen the cohort. Silence it for stages that "
            "are meant to last longer. A rollout its schedule holds (outside its windows) does not "
            "fire; the 6h start again when its window opens."),
    ),
    AlertRule(
        name="EdgeshipCohortSilent",
        group="edgeship-rollouts",
        expr=render("silent_cohorts", window=ROLLOUT_WINDOW),
        for_="10m",
        severity="warning",
        summary="No reports from the {{ $labels.cohort }} cohort of {{ $labels.model }}",
        description=(
            "The active rollout of {{ $labels.model }} has had no inferences reported by its "
            "{{ $labels.cohort }} cohort for 20m. Without data the rollout cannot advance. Check that "
            "devices of that cohort are online, got their assignment and can reach the server; a small "
            "fleet at a low canary share may have no canary device at all."),
    ),
    AlertRule(
        name="EdgeshipReportsRejected",
        group="edgeship-server",
        expr=f"{render('reports_increase', outcome='rejected', window=ROLLOUT_WINDOW)} > {REJECTED_REPORTS}",
        for_="5m",
        severity="warning",
        summary="The server is refusing device reports",
        description=(
            "{{ $value | printf \"%.0f\" }} report batches were refused in the last 10m (invalid "
            "fields, unknown model, release or rollout, bad cohort or latency buckets). Their data is "
            "lost for the rollout analysis. The server's 4xx responses say why; look for an agent or "
            "server upgrade that changed the report format."),
    ),
    AlertRule(
        name="EdgeshipControllerErrors",
        group="edgeship-server",
        expr=f"{render('controller_errors_increase', window='15m')} >= {CONTROLLER_ERRORS}",
        for_="0m",
        severity="critical",
        summary="Rollout controller errors ({{ $labels.reason }})",
        description=(
            "The rollout controller had {{ $value | printf \"%.0f\" }} errors ({{ $labels.reason }}) in "
            "the last 15m. While it fails, rollouts are not analysed and bad canaries are not rolled "
            "back; after 4 error windows in a row a rollout pauses. Read the server log "
            "(\"controller pass failed\") and the rollout's verdicts."),
    ),
    AlertRule(
        name="EdgeshipClientsRateLimited",
        group="edgeship-server",
        expr=f"{render('rate_limited_increase', window=RATE_LIMITED_WINDOW)} >= {RATE_LIMITED_REQUESTS}",
        for_="0m",
        severity="warning",
        summary="Clients refused 429 on {{ $labels.route_group }} routes ({{ $labels.reason }})",
        description=(
            "{{ $value | printf \"%.0f\" }} requests to {{ $labels.route_group }} routes were refused 429 "
            "({{ $labels.reason }}) in the last 15m. auth_failures: an address failed authentication "
            "too often and is locked out: someone is guessing tokens, or devices behind one address "
            "(a NAT) have a wrong or revoked credential or enrollment token. registration_rate: one "
            "address registers devices faster than REGISTER_RATE_PER_MINUTE. The audit log names the "
            "address (action rate_limited); edgeship_auth_failures_total says which credential failed."),
    ),
    AlertRule(
        name="EdgeshipWebhookDeliveriesFailing",
        group="edgeship-server",
        expr=f"{render('webhook_deliveries_retrying')} > 0",
        for_=WEBHOOKS_FAILING_FOR,
        severity="warning",
        summary="Webhook deliveries keep failing ({{ $value | printf \"%.0f\" }} waiting to retry)",
        description=(
            "Rollout notifications have been failing for 30m: {{ $value | printf \"%.0f\" }} deliveries "
            "wait for another attempt, and the events after them wait too (each webhook gets its "
            "events in order). A delivery is given up after WEBHOOK_MAX_ATTEMPTS attempts (about an "
            "hour). `edgeship webhooks list` shows which webhook is retrying, `edgeship webhooks "
            "deliveries ID` the HTTP status or error of each attempt."),
    ),
    AlertRule(
        name="EdgeshipFleetDevicesDropping",
        group="edgeship-fleet",
        expr=(f"(\n{_nested(render('active_devices_drop', offset=DEVICES_OFFSET))}\n) > {DEVICES_DROP}\n"
              f"and on (device_class)\n{render('active_devices_before', offset=DEVICES_OFFSET)}"
              f" >= {DEVICES_MIN}"),
        for_="10m",
        severity="warning",
        summary="Active {{ $labels.device_class }} devices dropped",
        description=(
            "{{ $value | humanizePercentage }} of the {{ $labels.device_class }} devices that checked in "
            "30m ago no longer do. If a rollout is running, compare the cohorts: a candidate that "
            "crashes devices shows up here before it shows up in error ratios."),
    ),
)


def rules_document() -> dict[str, Any]:
    """The rule file as a mapping: one group per ``AlertRule.group``, in first-use order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for alert in ALERTS:
        groups.setdefault(alert.group, []).append(alert.to_dict())
    return {"groups": [{"name": name, "rules": rules} for name, rules in groups.items()]}


def rules_yaml() -> str:
    """The text of ``monitoring/prometheus/alerts.yml``."""
    return "# Generated by `python -m monitoring.build` from monitoring/alerts.py: do not edit.\n" + to_yaml(
        rules_document())
