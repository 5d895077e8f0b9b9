"""The rollout server's subcommands of ``edgeship``: ``server``, ``publish``, ``models``,
``rollout``, ``simulate``, ``devices`` / ``tokens`` (:mod:`rollout_server.admin_cli`) and
``webhooks`` (:mod:`rollout_server.webhooks_cli`).

Registered by :func:`edgeship.cli.build_parser`; imports stay inside the ``_run_*`` functions
so ``edgeship --help`` loads neither Flask nor SQLAlchemy.
"""

from __future__ import annotations

import argparse

from rollout_server.cli_connection import client as _client
from rollout_server.cli_connection import connection_args as _connection_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``server``, ``publish``, ``models``, ``rollout`` and ``simulate`` to the subcommands."""
    _add_server(sub)
    _add_publish(sub)
    _add_models(sub)
    _add_rollout(sub)
    _add_simulate(sub)
    from rollout_server.admin_cli import add_parsers as add_admin
    from rollout_server.webhooks_cli import add_parsers as add_webhooks

    add_admin(sub)
    add_webhooks(sub)


def _add_server(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "server", help="run the rollout server",
        description="Run the rollout server. SQLite in --data-dir unless --db gives a database URL "
        "(postgresql+psycopg://user:pass@host/db for several replicas). The first start creates "
        "an admin and an enrollment token and says where they are.",
    )
    p.add_argument("--db", default=None, metavar="URL", help="SQLAlchemy database URL")
    p.add_argument("--data-dir", default="edgeship-data", metavar="DIR",
                   help="SQLite file, artifacts and first-start tokens (default: edgeship-data)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes; 1 also runs the rollout controller, K run one each (default: 1)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="publisher public key (.pub) whose releases are accepted; repeatable "
                   "(default: $EDGESHIP_TRUSTED_KEYS)")
    p.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="serve HTTPS with this certificate (chain) file; needs --tls-key")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key file")
    p.set_defaults(run=_run_server)


def _run_server(args: argparse.Namespace) -> int:
    from rollout_server.serve import ServerSettingsError, serve

    if args.workers < 1:
        raise ServerSettingsError("--workers must be at least 1")
    serve(args.host, args.port, args.workers, args.db, args.data_dir, args.trusted_key,
          tls_cert=args.tls_cert, tls_key=args.tls_key)
    return 0


def _add_publish(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish", help="upload a signed release directory to the rollout server",
        description="Upload a release directory (manifest.json and the files it lists). The server "
        "checks the signature and every file's sha256 and size, and stores all or nothing.",
    )
    p.add_argument("dir", metavar="DIR", help="release directory written by `edgeship convert`")
    _connection_args(p)
    p.set_defaults(run=_run_publish)


def _run_publish(args: argparse.Namespace) -> int:
    result = _client(args).publish(args.dir)
    state = "published" if result.get("created", True) else "already published (identical manifest)"
    print(f"{state}: {result['model']} version {result['version']} (signed by {result['signed_by']})")
    for v in result["variants"]:
        runtime = f"{v['runtime']['name']}>={v['runtime']['min_version']}"
        print(f"  {v['id']:<24} {runtime:<24} {v['validation']:<14} {v['size_bytes']:>12,} B  "
              f"{v['sha256'][:16]}")
    golden = result.get("golden") or {}
    if golden.get("sha256"):
        print(f"  golden set: {golden['file']} ({golden['sha256'][:16]})")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models, set the stable release")
    actions = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="models with their stable version and releases")
    _connection_args(listing)
    listing.set_defaults(run=_run_models_list)
    stable = actions.add_parser("set-stable", help="make a release what every device runs")
    stable.add_argument("model")
    stable.add_argument("version")
    _connection_args(stable)
    stable.set_defaults(run=_run_models_stable)


def _run_models_list(args: argparse.Namespace) -> int:
    for model in _client(args).get("/v1/models")["models"]:
        print(f"{model['name']:<24} stable {model.get('stable_version') or '-':<12} "
              f"{model.get('releases', '')} release(s)")
    return 0


def _run_models_stable(args: argparse.Namespace) -> int:
    result = _client(args).post(f"/v1/models/{args.model}/stable", {"version": args.version})
    print(f"{result['model']}: stable is now {result['stable_version']} "
          f"(was {result.get('previous_version') or 'none'})")
    return 0


def _add_rollout(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="gray releases: start, status, pause, resume, promote, abort, approve")
    actions = p.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start a gray release of VERSION against the stable release")
    start.add_argument("model")
    start.add_argument("version")
    start.add_argument("--stages", default="10,50,100", help="canary percents (default: 10,50,100)")
    start.add_argument("--min-duration", type=float, default=3600.0, metavar="SECONDS",
                       help="minimum duration of each stage (default: 3600)")
    start.add_argument("--min-samples", type=int, default=5000,
                       help="canary inferences each stage needs (default: 5000)")
    start.add_argument("--guards", metavar="FILE.json",
                       help="guard spec as JSON (default: error rate, latency p95, accuracy, load failures)")
    start.add_argument("--stratify", action="store_true", help="bucket each device class separately")
    start.add_argument("--shadow", action="store_true",
                       help="stable devices also run the candidate on a share of inputs")
    start.add_argument("--target", action="append", default=[], metavar="CONDITION",
                       help="only devices whose attributes meet it may be canaries, e.g. 'app_version>=4.2' "
                            "or 'region in eu,us' (repeat: all must hold; others stay stable, uncounted)")
    from rollout_server.workflow_cli import add_start_args

    add_start_args(start)  # --approve-before, --start-at, --window, --dry-run-guard
    _connection_args(start)
    start.set_defaults(run=_run_rollout_start)
    listing = actions.add_parser("list", help="recent rollouts")
    listing.add_argument("--model")
    _connection_args(listing)
    listing.set_defaults(run=_run_rollout_list)
    status = actions.add_parser("status", help="phase, stage, share and every verdict with its reason")
    status.add_argument("id", type=int)
    status.add_argument("--verdicts", type=int, default=12, help="how many verdicts to show (default: 12)")
    _connection_args(status)
    status.set_defaults(run=_run_rollout_status)
    for action in ("pause", "resume", "promote", "abort", "approve"):
        manual = actions.add_parser(action, help=f"{action} a rollout by hand")
        manual.add_argument("id", type=int)
        manual.add_argument("--reason", help="recorded in the audit log")
        _connection_args(manual)
        manual.set_defaults(run=_run_rollout_action, action=action)


def _run_rollout_start(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rollout_server.client import ClientError
    from rollout_server.targeting import TargetError, parse_expression

    try:
        target = [parse_expression(text) for text in args.target]
    except TargetError as err:
        raise ClientError(0, "usage", f"--target: {err}") from None
    try:
        percents = [float(p) for p in args.stages.split(",")]
    except ValueError:
        raise ClientError(0, "usage", f"--stages {args.stages!r}: comma-separated percents") from None
    stages = [{"percent": p, "min_duration_seconds": args.min_duration, "min_samples": args.min_samples}
              for p in percents]
    body = {"model": args.model, "candidate_version": args.version, "stages": stages,
            "stratify": args.stratify, "shadow": args.shadow, **({"target": target} if target else {})}
    if args.guards:
        try:
            body["guards"] = json.loads(Path(args.guards).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ClientError(0, "usage", f"--guards {args.guards}: {err}") from None
    from rollout_server.workflow_cli import start_fields

    try:
        body.update(start_fields(args, body.get("guards")))
    except ValueError as err:
        raise ClientError(0, "usage", str(err)) from None
    _print_status(_client(args).post("/v1/rollouts", body), verdicts=0)
    return 0


def _run_rollout_list(args: argparse.Namespace) -> int:
    params = {"model": args.model} if args.model else {}
    for r in _client(args).get("/v1/rollouts", **params)["rollouts"]:
        print(f"#{r['id']:<5} {r['model']:<20} {r['baseline']} -> {r['candidate']:<10} {r['phase']:<12} "
              f"stage {r['stage']}/{r['stages']} ({r['canary_percent']:g}%)  {r['reason'] or ''}")
    return 0


def _run_rollout_status(args: argparse.Namespace) -> int:
    _print_status(_client(args).get(f"/v1/rollouts/{args.id}"), verdicts=args.verdicts)
    return 0


def _run_rollout_action(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else {}
    _print_status(_client(args).post(f"/v1/rollouts/{args.id}/{args.action}", body), verdicts=0)
    return 0


def _print_status(status: dict, verdicts: int) -> None:
    print(f"rollout #{status['id']}: {status['model']} {status['baseline']} -> {status['candidate']}")
    print(f"  phase {status['phase']}, stage {status['stage']}/{status['stages']}, "
          f"canary {status['canary_percent']:g}%")
    target = (status.get("spec") or {}).get("target")
    if target:
        from rollout_server.targeting import expression

        print(f"  target: {' and '.join(expression(condition) for condition in target)}")
    if status.get("devices"):
        print(f"  devices active in the stage: {status['devices']['canary']} canary, "
              f"{status['devices']['stable']} stable")
    if status.get("reason"):
        print(f"  reason: {status['reason']}")
    from rollout_server.workflow_cli import status_lines

    for line in status_lines(status):
        print(line)
    for v in status.get("verdicts", [])[:verdicts]:
        print(f"  {v['window_end'][:19]}  stage {v['stage']}  {v['guard']:<14} {v['outcome']:<12} "
              f"-> {v['decision']:<8} {'[dry run] ' if v.get('dry_run') else ''}{v['reason']}")


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="load a loopback server with thousands of simulated devices",
        description="Drive simulated devices over real HTTP against a server on this machine "
        "(loopback only): each registers, polls its assignment with its ETag and reports every "
        "window, with errors, latency and accuracy drawn from a profile per release version. Stops "
        "after --duration seconds, or when the watched rollout is promoted, rolled back or aborted.",
    )
    p.add_argument("--server", default=None, metavar="URL",
                   help="server base URL on loopback, e.g. http://127.0.0.1:8080 (default: $EDGESHIP_SERVER)")
    p.add_argument("--enroll-token", default=None, metavar="T",
                   help="enrollment token (default: --enroll-token-file, then $EDGESHIP_ENROLL_TOKEN)")
    p.add_argument("--enroll-token-file", default=None, metavar="PATH",
                   help="read the enrollment token from this file (mode 0600)")
    p.add_argument("--model", required=True, help="model the devices poll for")
    p.add_argument("--devices", type=int, default=100, help="fleet size (default: 100)")
    p.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                   help="stop after this many seconds at the latest (default: 60)")
    p.add_argument("--profile", action="append", default=[], metavar="VERSION[/VARIANT]:key=value,...",
                   help="behaviour of a release, repeatable, e.g. 2:error=0.05,p50_ms=12,sigma=0.4,"
                   "accuracy=0.9; keys error, p50_ms, sigma, accuracy, load_fail, agreement, "
                   "error_dispersion, latency_dispersion; '*' for every other release")
    p.add_argument("--classes", default=None, metavar="CLASS:SHARE,...",
                   help="device classes and their shares (default: rpi4:0.5,rpi5:0.3,android:0.2)")
    p.add_argument("--runtimes", action="append", default=[], metavar="[CLASS=]NAME:VERSION,...",
                   help="runtimes of every device, or of one class with CLASS=, repeatable "
                   "(default: onnxruntime and litert; android litert only; ios coreml)")
    p.add_argument("--window-seconds", type=float, default=5.0,
                   help="real seconds between a device's reports and polls (default: 5)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated seconds per real second: each window reports window x scale "
                   "seconds of inferences (default: 1)")
    p.add_argument("--inference-rate", type=float, default=1.0, metavar="PER_SECOND",
                   help="mean inferences per device per simulated second (default: 1)")
    p.add_argument("--labelled-fraction", type=float, default=0.2,
                   help="share of inferences with a label (default: 0.2)")
    p.add_argument("--workers", type=int, default=8, help="worker threads (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--watch-rollout", type=int, default=None, metavar="ID",
                   help="follow this rollout and stop when it ends (needs --token)")
    p.add_argument("--token", default=None,
                   help="operator token for --watch-rollout (default: --token-file, then $EDGESHIP_TOKEN)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="read the operator token for --watch-rollout from this file")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the summary as JSON")
    p.set_defaults(run=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from rollout_server.client import ENV_ENROLL_TOKEN, default_token
    from rollout_server.simulator.cli import run

    args.enroll_token = default_token(args.enroll_token, args.enroll_token_file, env=ENV_ENROLL_TOKEN)
    if args.watch_rollout is not None:
        args.token = default_token(args.token, args.token_file)
    return run(args)
