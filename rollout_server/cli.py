"""The rollout server's subcommands of ``edgeship``: ``server`` and ``publish``.

Registered by :func:`converter.cli.build_parser`; imports stay inside the ``_run_*`` functions
so ``edgeship --help`` loads neither Flask nor SQLAlchemy.
"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``server`` and ``publish`` to the ``edgeship`` subcommands."""
    _add_server(sub)
    _add_publish(sub)


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
                   help="worker processes; more than 1 runs gunicorn (default: 1)")
    p.set_defaults(run=_run_server)


def _run_server(args: argparse.Namespace) -> int:
    from rollout_server.serve import serve

    serve(args.host, args.port, args.workers, args.db, args.data_dir)
    return 0


def _add_publish(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish", help="upload a signed release directory to the rollout server",
        description="Upload a release directory (manifest.json and the files it lists). The server "
        "checks the signature and every file's sha256 and size, and stores all or nothing.",
    )
    p.add_argument("dir", metavar="DIR", help="release directory written by `edgeship convert`")
    p.add_argument("--server", default=None, metavar="URL",
                   help="server base URL, e.g. http://127.0.0.1:8080 (default: $EDGESHIP_SERVER)")
    p.add_argument("--token", default=None,
                   help="operator token with the publisher role (default: $EDGESHIP_TOKEN)")
    p.set_defaults(run=_run_publish)


def _run_publish(args: argparse.Namespace) -> int:
    import os

    from rollout_server.client import ENV_SERVER, ENV_TOKEN, ClientError, ServerClient, default_token

    server = args.server or os.environ.get(ENV_SERVER)
    token = default_token(args.token)
    if not server:
        raise ClientError(0, "usage", f"no server: pass --server URL or set {ENV_SERVER}")
    if not token:
        raise ClientError(0, "usage", f"no token: pass --token or set {ENV_TOKEN}")
    result = ServerClient(server, token).publish(args.dir)
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
