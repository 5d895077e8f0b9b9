"""``edgeship simulate``: the run behind the subcommand that ``rollout_server/cli.py`` registers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rollout_server.simulator.config import SimulationConfig
from rollout_server.simulator.errors import SettingsError
from rollout_server.simulator.fleet import DEFAULT_CLASSES, parse_classes, parse_runtimes
from rollout_server.simulator.profiles import ProfileTable, parse_profile
from rollout_server.simulator.runner import Simulation
from rollout_server.simulator.summary import format_summary

ENV_ENROLL_TOKEN = "EDGESHIP_ENROLL_TOKEN"


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Parse the CLI's specs into a :class:`SimulationConfig`.

    Raises:
        SettingsError: a malformed spec or a missing server / token.
    """
    from rollout_server.client import ENV_SERVER, default_token

    server = args.server or os.environ.get(ENV_SERVER)
    if not server:
        raise SettingsError(f"no server: pass --server URL or set {ENV_SERVER}")
    enroll = args.enroll_token or os.environ.get(ENV_ENROLL_TOKEN)
    if not enroll:
        raise SettingsError(f"no enrollment token: pass --enroll-token or set {ENV_ENROLL_TOKEN}")
    profiles = {}
    for spec in args.profile:
        key, profile = parse_profile(spec)
        if key in profiles:
            raise SettingsError(f"--profile {spec!r}: {key} given twice")
        profiles[key] = profile
    return SimulationConfig(
        server=server, enrollment_token=enroll, model=args.model, devices=args.devices,
        duration_seconds=args.duration, window_seconds=args.window_seconds, time_scale=args.time_scale,
        inferences_per_second=args.inference_rate, labelled_fraction=args.labelled_fraction,
        profiles=ProfileTable(profiles),
        classes=parse_classes(args.classes) if args.classes else dict(DEFAULT_CLASSES),
        runtimes=parse_runtimes(args.runtimes), workers=args.workers, seed=args.seed,
        watch_rollout=args.watch_rollout,
        operator_token=default_token(args.token) if args.watch_rollout is not None else None,
    )


def run(args: argparse.Namespace) -> int:
    """Run the simulation; print a line per window and the summary; 0 unless it could not start."""
    config = config_from_args(args)
    simulation = Simulation(config, log=lambda line: print(line, flush=True))  # loopback check first
    print(f"simulating {config.devices} devices against {simulation.target.url} "
          f"({simulation.target.address}:{simulation.target.port}) with {config.workers} workers, "
          f"a {config.window_seconds:g} s window = "
          f"{config.window_seconds * config.time_scale:g} simulated s, "
          f"for at most {config.duration_seconds:g} s", flush=True)
    summary = simulation.run()
    print(format_summary(summary), flush=True)
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {path}", file=sys.stderr)
    return 130 if summary["stopped_because"] == "interrupted" else 0
