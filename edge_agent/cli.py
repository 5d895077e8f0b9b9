"""``edgeship agent``: run the edge agent standalone (registered by :mod:`edgeship.cli`).

Imports stay inside :func:`_run` so ``edgeship --help`` loads no runtime. SIGTERM and SIGINT
stop the agent cleanly: the open window is closed into the outbox and delivered if the server
answers, then the process exits 0.

Exit codes: 0 stopped by a signal or ``--duration``; 2 a setting it cannot run with (one line
naming it); 3 the device was revoked or rejected by an operator (:data:`EXIT_REVOKED`; it will
not enroll again until it is given a new enrollment token, so a supervisor should not restart
it: the systemd unit says ``RestartPreventExitStatus=3``). A device waiting for an operator to
accept it keeps running (and says so in its log).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_REVOKED = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agent", help="run the edge agent on this device",
        description="Fetch, verify and run the model assigned to this device; report how it does. "
        "Settings come from --config (TOML), then EDGESHIP_AGENT_* variables, then these flags.",
    )
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="agent settings file")
    p.add_argument("--server", help="rollout server URL")
    p.add_argument("--enroll-token", dest="enroll_token",
                   help="enrollment token (first start only; visible in ps: prefer --enroll-token-file or "
                   "$EDGESHIP_ENROLL_TOKEN)")
    p.add_argument("--enroll-token-file", dest="enroll_token_file", type=Path, metavar="PATH",
                   help="read the enrollment token from this file (mode 0600)")
    p.add_argument("--model", help="registry name of the model to run")
    p.add_argument("--state-dir", dest="state_dir", type=Path, help="the agent's own directory")
    p.add_argument("--trusted-key", dest="trusted_keys", action="append", type=Path, metavar="FILE.pub",
                   help="publisher public key manifests must be signed with (repeatable)")
    p.add_argument("--device-class", dest="device_class", help="e.g. rpi4 (default: detected)")
    p.add_argument("--ca-file", dest="ca_file", type=Path, metavar="FILE.pem",
                   help="CA certificate(s) the server's certificate must chain to (default: system store)")
    p.add_argument("--server-pin-sha256", dest="server_pin_sha256", action="append", metavar="BASE64",
                   help="accept only this server public key: base64 sha256 of its SubjectPublicKeyInfo "
                   "(repeatable)")
    p.add_argument("--allow-insecure-http", dest="allow_insecure_http", action="store_true", default=None,
                   help="allow http:// to a server that is not on this machine (credentials in clear)")
    p.add_argument("--workload", type=Path, metavar="FILE.npz",
                   help="replay these inputs (and labels) as live traffic")
    p.add_argument("--rate", dest="rate_per_second", type=float, help="replay batches per second")
    p.add_argument("--check-interval", dest="check_interval_seconds", type=float, metavar="SECONDS")
    p.add_argument("--metrics-port", dest="metrics_port", type=int, help="serve a local /metrics here")
    p.add_argument("--threads", type=int, help="runtime threads")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this long")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(run=_run)


SETTINGS = ("server", "enroll_token", "enroll_token_file", "model", "state_dir", "trusted_keys",
            "device_class", "workload", "rate_per_second", "check_interval_seconds", "metrics_port",
            "threads", "ca_file", "server_pin_sha256", "allow_insecure_http")


def _run(args: argparse.Namespace) -> int:
    import json
    import logging
    import signal
    import sys
    import threading
    import time

    from edge_agent.agent import Agent
    from edge_agent.config import ConfigError, load_config
    from edge_agent.workload import Replay

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, **{name: getattr(args, name) for name in SETTINGS}).check()
        agent = Agent(config)
        replay = Replay(agent, config.workload, config.rate_per_second) if config.workload else None
    except (ConfigError, ValueError, OSError) as err:
        print(f"edgeship agent: error: {err}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    agent.start()
    if agent.revoked:  # revoked before, and no new enrollment token since
        replay = None
    if replay is not None:
        replay.start()
    deadline = None if args.duration is None else time.monotonic() + args.duration
    while not stopped.is_set() and not agent.revoked:  # whichever comes first
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        stopped.wait(0.2 if left is None else min(0.2, left))
    if replay is not None:
        replay.stop()
    final = agent.stop()
    logging.getLogger("edgeship.agent").info("stopped: %s", json.dumps(final, sort_keys=True))
    if final["revoked"]:
        print(f"edgeship agent: error: this device was {agent.refusal} by an operator; it enrolls again "
              "only with a new enrollment token (enroll_token)", file=sys.stderr)
        return EXIT_REVOKED
    return 0
