"""``edgeship demo``: the whole loop in one command (registered by :mod:`edgeship.cli`).

Imports stay inside :func:`_run`, so ``edgeship --help`` loads nothing heavy.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``edgeship`` subcommands."""
    p = sub.add_parser(
        "demo", help="the whole loop on this machine: convert, publish, a fleet of agents, two gray releases",
        description="Train and convert the digits CNN (cached), start a rollout server (SQLite, loopback), "
        "Prometheus when installed, and a fleet of real edge agents (Python agents and TypeScript SDK "
        "phones) replaying the eval set; then roll out a release that fails its golden check on-device "
        "(rolled back automatically) and a good one (10% → 50% → 100%). Prints a live view and a summary. "
        "Ctrl-C stops every process it started.",
    )
    p.add_argument("--workdir", type=Path, default=Path("build/demo"),
                   help="releases cache and this run's state (default: build/demo)")
    p.add_argument("--agents", type=int, default=100, help="agents in the fleet (default: 100)")
    p.add_argument("--workers", type=int, default=4,
                   help="Python worker processes hosting the agents that are not phones (default: 4)")
    p.add_argument("--phones", type=float, default=20.0, metavar="PERCENT",
                   help="share of the agents that are phones: TypeScript SDK agents (android, ios) in one "
                   "Node process, when Node.js and sdk/js/node_modules are here (default: 20; 0: none)")
    p.add_argument("--rate", type=float, default=4.0, metavar="PER_SECOND",
                   help="inferences per second per agent (default: 4)")
    p.add_argument("--stages", default="10,50,100", help="canary percents (default: 10,50,100)")
    p.add_argument("--stage-seconds", type=float, default=30.0,
                   help="minimum duration of each analysed stage (default: 30)")
    p.add_argument("--stage-samples", type=int, default=400,
                   help="canary inferences each analysed stage needs (default: 400)")
    p.add_argument("--min-devices", type=int, default=3,
                   help="devices per arm the load-failure guard needs (default: 3)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prometheus", dest="prometheus", action="store_true", default=None,
                       help="require Prometheus (default: start it when installed)")
    group.add_argument("--no-prometheus", dest="prometheus", action="store_false", help="do not start it")
    p.add_argument("--prometheus-port", type=int, help="its port (default: 9090 when free)")
    p.add_argument("--keep-running", action="store_true",
                   help="after the summary keep the server, fleet and Prometheus up until Ctrl-C")
    p.add_argument("--print-every", type=float, default=10.0, metavar="SECONDS",
                   help="how often the live view is printed when the output is not a terminal (default: 10)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from examples.demo.fleet import FleetSettings
    from examples.demo.rollouts import GuardMinimums
    from examples.demo.run import DemoConfig, run_demo

    try:
        stages = tuple(float(p) for p in args.stages.split(","))
        config = DemoConfig(
            workdir=args.workdir,
            fleet=FleetSettings(agents=args.agents, workers=args.workers, phone_share=args.phones / 100,
                                rate_per_second=args.rate),
            stages=stages, stage_seconds=args.stage_seconds, stage_samples=args.stage_samples,
            guards=GuardMinimums(load_failures=args.min_devices), prometheus=args.prometheus,
            prometheus_port=args.prometheus_port, keep_running=args.keep_running,
            print_every_seconds=args.print_every)
    except ValueError as err:
        print(f"edgeship demo: error: {err}", file=sys.stderr)
        return 2
    return run_demo(config)
