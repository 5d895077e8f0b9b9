"""How every operator command of ``edgeship`` finds the server and its token.

A leaf both :mod:`rollout_server.cli` and :mod:`rollout_server.admin_cli` import. The token comes
from ``--token``, else ``--token-file`` (so it need not be on a command line, visible in ``ps``),
else ``$EDGESHIP_TOKEN``.
"""

from __future__ import annotations

import argparse


def connection_args(p: argparse.ArgumentParser) -> None:
    """Add ``--server``, ``--token`` and ``--token-file`` to an operator command."""
    p.add_argument("--server", default=None, metavar="URL",
                   help="server base URL, e.g. http://127.0.0.1:8080 (default: $EDGESHIP_SERVER)")
    p.add_argument("--token", default=None,
                   help="operator token (default: --token-file, then $EDGESHIP_TOKEN); visible in ps")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="read the operator token from this file (mode 0600)")


def client(args: argparse.Namespace):
    """A :class:`rollout_server.client.ServerClient` for the command's server and token.

    Raises:
        ClientError: no server or no token given.
    """
    import os

    from rollout_server.client import ENV_SERVER, ENV_TOKEN, ClientError, ServerClient, default_token

    server = args.server or os.environ.get(ENV_SERVER)
    token = default_token(args.token, args.token_file)
    if not server:
        raise ClientError(0, "usage", f"no server: pass --server URL or set {ENV_SERVER}")
    if not token:
        raise ClientError(0, "usage", f"no token: pass --token-file, set {ENV_TOKEN} or pass --token")
    return ServerClient(server, token)
