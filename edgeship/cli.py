"""The ``edgeship`` command line: one entry point, a subcommand per component.

Each component registers its own subcommands through an ``add_parser(s)(subparsers)``
function and keeps its heavy imports inside the function that runs them. This is the only
module that imports every component: the root of the import graph.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgeship.contract.errors import EdgeshipError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except EdgeshipError as err:
        print(f"edgeship {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"edgeship {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


def build_parser() -> argparse.ArgumentParser:
    from converter.cli import add_parsers as add_converter
    from edge_agent.cli import add_parser as add_agent
    from examples.demo.cli import add_parser as add_demo
    from rollout_server.cli import add_parsers as add_server

    parser = argparse.ArgumentParser(
        prog="edgeship", description="On-device model deployment and A/B rollout."
    )
    parser.add_argument("--version", action="version", version=f"edgeship {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_converter(sub)
    add_server(sub)
    add_agent(sub)
    add_demo(sub)
    return parser


def _version() -> str:
    """The installed distribution's version (what a bug report should name)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgeship")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
