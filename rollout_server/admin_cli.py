"""``edgeship devices list|accept|reject|revoke`` and ``edgeship tokens list|create|revoke|rotate``.

Registered by :func:`rollout_server.cli.add_parsers`; everything goes over HTTP with
:class:`rollout_server.client.ServerClient`. A new token's secret is the only thing written to
stdout (or to ``--out FILE``, created 0600), so ``edgeship tokens create ... > file`` or a pipe
gets the secret alone; what was done goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rollout_server.cli_connection import client as _client
from rollout_server.cli_connection import connection_args as _connection_args

DEVICE_STATES = ("pending", "active", "rejected", "revoked")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_devices(sub)
    _add_tokens(sub)


# -- devices -------------------------------------------------------------------------------------

def _add_devices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list devices; accept, reject or revoke them")
    actions = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="devices with their state, class and last poll")
    listing.add_argument("--state", choices=DEVICE_STATES)
    listing.add_argument("--class", dest="device_class", metavar="CLASS", help="only this device class")
    listing.add_argument("--seen-within", type=int, metavar="SECONDS", help="only devices seen this recently")
    listing.add_argument("--not-seen-for", type=int, metavar="SECONDS",
                         help="only devices not seen for this long (or never)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default: 100, max 1000)")
    listing.add_argument("--offset", type=int, default=0, help="skip this many (default: 0)")
    _connection_args(listing)
    listing.set_defaults(run=_run_devices_list)
    for action, text in (("accept", "admit pending devices"),
                         ("reject", "refuse pending devices for good"),
                         ("revoke", "refuse devices' credentials for good")):
        command = actions.add_parser(action, help=text)
        command.add_argument("device_ids", nargs="+", metavar="DEVICE_ID")
        _connection_args(command)
        command.set_defaults(run=_run_device_action, action=action)


def _run_devices_list(args: argparse.Namespace) -> int:
    params = {"state": args.state, "device_class": args.device_class, "seen_within_seconds": args.seen_within,
              "not_seen_for_seconds": args.not_seen_for, "limit": args.limit, "offset": args.offset or None}
    devices = _client(args).get("/v1/devices", **_given(params))["devices"]
    print(f"{'DEVICE':<36}  {'STATE':<8}  {'CLASS':<16}  {'LAST SEEN':<19}  ENROLLED")
    for d in devices:
        print(f"{d['device_id']:<36}  {d['state']:<8}  {d['device_class']:<16}  "
              f"{(d['last_seen_at'] or 'never')[:19]:<19}  {d['created_at'][:19]}")
    return 0


def _run_device_action(args: argparse.Namespace) -> int:
    client = _client(args)
    for device_id in args.device_ids:
        device = client.post(f"/v1/devices/{device_id}/{args.action}")
        print(f"device {device['device_id']}: {device['state']}")
    return 0


# -- tokens --------------------------------------------------------------------------------------

def _add_tokens(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokens", help="operator and enrollment tokens: list, create, revoke, rotate")
    actions = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every token (never its secret)")
    _connection_args(listing)
    listing.set_defaults(run=_run_tokens_list)

    create = actions.add_parser("create", help="a new token; its secret goes to stdout (or --out)")
    create.add_argument("name")
    create.add_argument("--role", required=True,
                        choices=("viewer", "publisher", "operator", "admin", "enroll"))
    create.add_argument("--expires-in", type=int, metavar="SECONDS", help="the token expires after this long")
    create.add_argument("--max-uses", type=int, metavar="N", help="enrollment: enroll at most N devices")
    create.add_argument("--device-class", dest="device_classes", action="append", metavar="CLASS",
                        help="enrollment: enroll only this device class (repeatable)")
    create.add_argument("--admission", choices=("auto", "manual"),
                        help="enrollment: 'manual' keeps its devices pending until accepted")
    _out_arg(create)
    _connection_args(create)
    create.set_defaults(run=_run_tokens_create)

    revoke = actions.add_parser("revoke", help="revoke a token (never the last admin token without expiry)")
    revoke.add_argument("id", type=int)
    _connection_args(revoke)
    revoke.set_defaults(run=_run_tokens_revoke)

    rotate = actions.add_parser("rotate", help="a new secret for a token (same name, role and policy); "
                                "the old one is revoked, or expires after --overlap")
    rotate.add_argument("id", type=int)
    rotate.add_argument("--overlap", type=int, default=0, metavar="SECONDS",
                        help="the old secret keeps working this long (default: 0, revoked at once)")
    rotate.add_argument("--expires-in", type=int, metavar="SECONDS",
                        help="lifetime of the new secret (default: the old one's)")
    _out_arg(rotate)
    _connection_args(rotate)
    rotate.set_defaults(run=_run_tokens_rotate)


def _out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE",
                   help="write the secret to this new file (mode 0600) instead of stdout")


def _run_tokens_list(args: argparse.Namespace) -> int:
    print(f"{'ID':>5}  {'NAME':<24}  {'ROLE':<9}  {'STATE':<7}  {'EXPIRES':<19}  ENROLLMENT")
    for t in _client(args).get("/v1/tokens")["tokens"]:
        state = "revoked" if t["revoked"] else "expired" if t["expired"] else "active"
        expires = (t["expires_at"] or "never")[:19]
        print(f"{t['id']:>5}  {t['name']:<24}  {t['role']:<9}  {state:<7}  {expires:<19}  {_enrollment(t)}")
    return 0


def _enrollment(token: dict[str, Any]) -> str:
    if token["role"] != "enroll":
        return ""
    uses = f"{token['uses']}/{token['max_uses']}" if token.get("max_uses") else f"{token['uses']}/-"
    classes = ",".join(token.get("device_classes") or []) or "any class"
    return f"uses {uses}, {classes}, admission {token.get('admission') or 'server default'}"


def _run_tokens_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "role": args.role, "expires_in_seconds": args.expires_in,
            "max_uses": args.max_uses, "device_classes": args.device_classes, "admission": args.admission}
    token = _client(args).post("/v1/tokens", _given(body))
    _give_secret(token, args.out, f"created token #{token['id']} {token['name']} ({token['role']})")
    return 0


def _run_tokens_revoke(args: argparse.Namespace) -> int:
    _client(args).post(f"/v1/tokens/{args.id}/revoke")
    print(f"token #{args.id} revoked")
    return 0


def _run_tokens_rotate(args: argparse.Namespace) -> int:
    body = {"overlap_seconds": args.overlap, "expires_in_seconds": args.expires_in}
    token = _client(args).post(f"/v1/tokens/{args.id}/rotate", _given(body))
    old = (f"old secret works until {token['replaced_until']}" if token.get("replaced_until")
           else "old secret revoked")
    _give_secret(token, args.out, f"rotated token #{args.id} {token['name']} into #{token['id']}; {old}")
    return 0


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The options that were given (None: left out)."""
    return {k: v for k, v in values.items() if v is not None}


def _give_secret(token: dict[str, Any], out: str | None, done: str) -> None:
    """The secret to ``out`` (a new 0600 file) or stdout; what happened to stderr."""
    expires = f", expires {token['expires_at']}" if token.get("expires_at") else ""
    if out:
        from rollout_server.client import ClientError

        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            raise ClientError(0, "usage", f"--out {out}: {err.strerror} (the secret was not saved: revoke "
                                          f"token #{token['id']})") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(token["token"] + "\n")
        print(f"{done}{expires}; secret written to {out}", file=sys.stderr)
        return
    print(f"{done}{expires}", file=sys.stderr)
    print(token["token"])
