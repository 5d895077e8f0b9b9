"""``edgeship webhooks add|list|remove|deliveries|test``: rollout notifications from the command line.

Registered by :func:`rollout_server.cli.add_parsers`; everything goes over HTTP. A new webhook's
signing secret is the only thing ``add`` writes to stdout (``edgeship webhooks add URL > secret``);
what was done goes to stderr.
"""

from __future__ import annotations

import argparse
import sys

from rollout_server.cli_connection import client as _client
from rollout_server.cli_connection import connection_args as _connection_args

#: the event kinds (``rollout_server.notifications.events.KINDS``; not imported: it loads SQLAlchemy).
KINDS = ("phase_changed", "stage_advanced", "verdict_failed", "approval_requested")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webhooks", help="rollout notifications: add, list, remove, deliveries, test")
    actions = p.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="POST rollout events to URL; the signing secret goes to stdout")
    add.add_argument("url")
    add.add_argument("--kind", dest="kinds", action="append", choices=KINDS,
                     help="only this event kind (repeatable; default: every kind)")
    add.add_argument("--model", help="only this model's rollouts")
    add.add_argument("--format", choices=("edgeship", "slack"), default="edgeship",
                     help="edgeship JSON (default) or Slack's {\"text\": ...}")
    add.add_argument("--secret-file", metavar="PATH",
                     help="sign with the secret in this file instead of a generated one")
    _connection_args(add)
    add.set_defaults(run=_run_add)

    listing = actions.add_parser("list", help="every webhook with its pending and retrying deliveries")
    _connection_args(listing)
    listing.set_defaults(run=_run_list)

    remove = actions.add_parser("remove", help="remove a webhook (its pending deliveries are dropped)")
    remove.add_argument("id", type=int)
    _connection_args(remove)
    remove.set_defaults(run=_run_remove)

    deliveries = actions.add_parser("deliveries", help="a webhook's latest deliveries, newest first")
    deliveries.add_argument("id", type=int)
    deliveries.add_argument("--limit", type=int, default=20, help="at most this many (default: 20)")
    _connection_args(deliveries)
    deliveries.set_defaults(run=_run_deliveries)

    test = actions.add_parser("test", help="queue a test event for a webhook")
    test.add_argument("id", type=int)
    _connection_args(test)
    test.set_defaults(run=_run_test)


def _run_add(args: argparse.Namespace) -> int:
    body = {"url": args.url, "format": args.format}
    if args.kinds:
        body["kinds"] = args.kinds
    if args.model:
        body["model"] = args.model
    if args.secret_file:
        with open(args.secret_file) as handle:
            body["secret"] = handle.read().strip()
    hook = _client(args).post("/v1/webhooks", body)
    print(f"added webhook #{hook['id']} ({hook['format']}; {', '.join(hook['kinds'])}"
          f"{'; model ' + hook['model'] if hook['model'] else ''})", file=sys.stderr)
    if not args.secret_file:
        print(hook["secret"])
    return 0


def _run_list(args: argparse.Namespace) -> int:
    print(f"{'ID':>5}  {'FORMAT':<8}  {'MODEL':<16}  {'PENDING':>7}  {'RETRYING':>8}  URL")
    for h in _client(args).get("/v1/webhooks")["webhooks"]:
        print(f"{h['id']:>5}  {h['format']:<8}  {h['model'] or 'any':<16}  {h['pending']:>7}  "
              f"{h['retrying']:>8}  {h['url']}")
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/v1/webhooks/{args.id}")
    print(f"webhook #{args.id} removed")
    return 0


def _run_deliveries(args: argparse.Namespace) -> int:
    rows = _client(args).get(f"/v1/webhooks/{args.id}/deliveries", limit=args.limit)["deliveries"]
    print(f"{'ID':>7}  {'KIND':<18}  {'STATUS':<9}  {'TRIES':>5}  {'HTTP':>4}  {'NEXT ATTEMPT':<19}  ERROR")
    for d in rows:
        next_attempt = (d["next_attempt_at"] or "-")[:19]
        print(f"{d['id']:>7}  {d['kind']:<18}  {d['status']:<9}  {d['attempts']:>5}  "
              f"{d['last_status_code'] or '-':>4}  {next_attempt:<19}  {d['last_error'] or ''}")
    return 0


def _run_test(args: argparse.Namespace) -> int:
    queued = _client(args).post(f"/v1/webhooks/{args.id}/test")
    print(f"test event queued for webhook #{args.id} (delivery {queued['delivery_id']}); "
          f"see: edgeship webhooks deliveries {args.id}")
    return 0
