"""``python -m rollout_server.migrations <alembic command>``: alembic's CLI on the package's scripts."""

from __future__ import annotations

import logging
import sys

from alembic.config import CommandLine

from rollout_server.db import alembic_config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.INFO)  # "Running upgrade  -> 0001, ..."
    cli = CommandLine(prog="python -m rollout_server.migrations")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    cli.run_cmd(alembic_config(), options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
