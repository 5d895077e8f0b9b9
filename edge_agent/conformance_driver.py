"""The reference agent behind the conformance kit's driver protocol (docs/conformance.md).

The kit (``conformance/``) starts one device per process and talks to it one JSON line at a
time on stdin/stdout; this module is that device for :class:`edge_agent.agent.Agent`::

    python -m edge_agent.conformance_driver --server http://127.0.0.1:8080 --model digits-cnn \\
        --trusted-key publisher.pub --state-dir /tmp/dev1 --enroll-token-file token.txt

Without ``--check-interval-seconds`` nothing runs on its own: check-ins, window closes and
deliveries happen on the kit's commands, from this one thread (``Agent.start(loop=False)``).
With it, the agent's own loop runs and the kit sends only ``predict``, ``status`` and ``stop``.
Logs go to stderr; stdout carries the protocol only.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge_agent.agent import Agent, InferenceError, NoModel
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.device import describe, installed_runtimes

#: status fields of the protocol, in the order the spec lists them
STATUS_FIELDS = ("device_id", "version", "variant", "cohort", "rollout_id", "outbox", "revoked", "pending")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--trusted-key", action="append", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--enroll-token-file", type=Path)
    parser.add_argument("--ca-file", type=Path)
    parser.add_argument("--device-class", default="linux-x86_64")
    parser.add_argument("--check-interval-seconds", type=float,
                        help="run the agent's own loop at this interval (default: only on commands)")
    parser.add_argument("--runtimes", type=json.loads,
                        help="the runtimes to announce, a JSON object (default: those installed here)")
    return parser.parse_args(argv)


def make_agent(args: argparse.Namespace) -> Agent:
    """The agent for ``args``; it announces the runtimes installed here, or ``--runtimes`` (the
    start-up probe of ``edgeship agent`` is left out: it costs seconds per start and the kit
    judges the protocol)."""
    config = AgentConfig(
        server=args.server, model=args.model, state_dir=args.state_dir, trusted_keys=args.trusted_key,
        enroll_token_file=args.enroll_token_file, device_class=args.device_class, ca_file=args.ca_file,
        check_interval_seconds=args.check_interval_seconds or 10.0, threads=1)
    runtimes = args.runtimes if args.runtimes is not None else installed_runtimes()
    device = describe(args.device_class, runtimes=runtimes)
    return Agent(config, device=device)


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """An array on the wire of the driver protocol: numpy dtype name, shape, little-endian bytes
    in base64 (the kit imports this pair: one codec for both ends)."""
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": array.dtype.name, "shape": list(array.shape),
            "data": base64.b64encode(little.tobytes()).decode()}


def decode_array(value: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(value["dtype"]).newbyteorder("<")
    return np.frombuffer(base64.b64decode(value["data"]), dtype=dtype).reshape(value["shape"])


class Driver:
    """Answers the commands of docs/conformance.md for one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def status(self) -> dict[str, Any]:
        status = self.agent.status()
        return {name: status.get(name) for name in STATUS_FIELDS}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "status":
            return {"status": self.status()}
        if command == "check_in":
            self.agent.check_in()
            return {"status": self.status()}
        if command == "predict":
            return self.predict(request)
        if command == "close_window":
            self.agent.close_window()
            return {"status": self.status()}
        if command == "deliver":
            return {"delivered": self.agent.deliver(), "status": self.status()}
        if command == "stop":
            final = self.agent.stop(float(request.get("flush_seconds", 5.0)))
            return {"status": {name: final.get(name) for name in STATUS_FIELDS}}
        return {"error": "unknown_command", "detail": f"no command {command!r}"}

    def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        inputs = {name: decode_array(value) for name, value in request["inputs"].items()}
        model = self.agent.current
        try:
            outputs = self.agent.predict(inputs, label=request.get("label"))
        except NoModel as err:
            return {"error": "no_model", "detail": str(err)}
        except InferenceError as err:
            return {"error": "runtime_error", "detail": str(err)}
        names = model.output_names if model is not None else [str(i) for i in range(len(outputs))]
        return {"outputs": {name: encode_array(out) for name, out in zip(names, outputs, strict=False)}}


def serve(driver: Driver, lines: TextIO, out: TextIO) -> None:
    """One answer line per command line, until ``stop`` or the end of input (which stops too)."""
    reply(out, {"ready": True, "status": driver.status()})
    for line in lines:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            answer = driver.answer(request)
        except Exception as err:  # the kit sees the failure as an answer and decides
            logging.getLogger("edgeship.driver").exception("command failed")
            answer = {"error": "driver_error", "detail": f"{type(err).__name__}: {err}"}
            request = {}
        reply(out, answer)
        if request.get("cmd") == "stop":
            return
    driver.agent.stop()


def reply(out: TextIO, data: dict[str, Any]) -> None:
    out.write(json.dumps(data) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        agent = make_agent(args)
    except ConfigError as err:
        print(f"conformance driver: {err}", file=sys.stderr)
        return 2
    agent.start(loop=args.check_interval_seconds is not None)
    serve(Driver(agent), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
