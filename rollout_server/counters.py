"""Server-wide counters: one ``counters`` row per name, shared by every worker and replica.

Their names are defined here, once, because three places must agree on them: the writers
(report ingestion, the controller, the assignment cache's device-change hook) add to them,
``/metrics`` reads them, and :func:`ensure_counters` creates their rows at start. They live
apart from the API so that the controller and the cache need no blueprint module.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rollout_server.models import Counter

#: reasons of ``edgeship_controller_errors_total`` (counter ``controller_errors_<reason>``).
CONTROLLER_ERRORS = ("pass_failed", "analysis_error")
#: every ORM change to a device row adds one, so other processes drop their cached devices
#: (:mod:`rollout_server.hot_cache`).
DEVICE_CHANGES = "device_changes"
#: reasons of ``edgeship_reports_refused_total`` (counter ``reports_refused_<reason>``): reports
#: whose claims the server's records contradict (:mod:`rollout_server.report_checks`).
REPORT_REFUSALS = ("not_in_rollout", "cohort_mismatch", "window_out_of_range", "count_over_cap")
#: (route group, reason) of ``edgeship_rate_limited_total`` (counter ``rate_limited_<group>_<reason>``):
#: requests refused 429 by the per-client limits (:mod:`rollout_server.rate_limits`).
RATE_LIMITED = (("register", "registration_rate"), ("register", "auth_failures"),
                ("device", "auth_failures"), ("operator", "auth_failures"))
#: reasons of ``edgeship_auth_failures_total`` (counter ``auth_failures_<reason>``): 401 answers, by
#: the credential that failed, a device an operator refused apart (:mod:`rollout_server.rate_limits`).
AUTH_FAILURES = ("missing_credential", "enrollment_token", "device_credential", "operator_token",
                 "device_revoked", "device_rejected")
#: outcomes of ``edgeship_webhook_deliveries_total`` (counter ``webhook_deliveries_<outcome>``):
#: webhook delivery attempts (:mod:`rollout_server.notifications.dispatcher`).
WEBHOOK_OUTCOMES = ("delivered", "retried", "gave_up")
COUNTERS = ("reports_duplicate", "reports_rejected", *(f"controller_errors_{r}" for r in CONTROLLER_ERRORS),
            *(f"reports_refused_{r}" for r in REPORT_REFUSALS), DEVICE_CHANGES,
            *(f"rate_limited_{group}_{reason}" for group, reason in RATE_LIMITED),
            *(f"auth_failures_{reason}" for reason in AUTH_FAILURES),
            *(f"webhook_deliveries_{outcome}" for outcome in WEBHOOK_OUTCOMES))


def ensure_counters(session: Session) -> None:
    """Create the counters' rows that are missing (safe when several processes start at once)."""
    for name in COUNTERS:
        if session.get(Counter, name) is None:
            try:
                with session.begin_nested():
                    session.add(Counter(name=name, value=0))
            except IntegrityError:  # another process created it first
                pass


def bump(session: Session, name: str, by: int = 1) -> None:
    """Add to a server-wide counter (one UPDATE; the row exists from the first start)."""
    session.execute(update(Counter).where(Counter.name == name).values(value=Counter.value + by))
