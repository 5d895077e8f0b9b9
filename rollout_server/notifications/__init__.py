"""Rollout notifications: events written with the change that causes them, POSTed to webhooks.

``events`` records them (an outbox, in the caller's transaction), ``dispatcher`` sends them,
signed (``signing``), in the edgeship or Slack shape (``payloads``), retried with backoff
(``schedule``). Why it is built this way: docs/decisions/2026-12-07-webhooks.md.
"""
