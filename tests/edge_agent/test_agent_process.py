"""``edgeship agent`` as a process: SIGTERM flushes and exits, kill -9 mid-download recovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import Outbox
from edge_agent.store import ModelStore
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.harness import ROOT, ServerProcess, free_port
from tests.edge_agent.proxy import ThrottlingProxy


class AgentProcess:
    """``python -m edgeship.cli agent ...`` with its log in a file."""

    def __init__(self, state_dir: Path, server_url: str, server: ServerProcess, releases: dict[str, Any],
                 *extra: str) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir.with_name(state_dir.name + ".log")
        self.args = [sys.executable, "-m", "edgeship.cli", "agent", "--server", server_url,
                     "--enroll-token", server.enroll, "--model", MODEL, "--state-dir", str(state_dir),
                     "--trusted-key", releases["keys"]["public"], "--device-class", "linux-x86_64",
                     "--check-interval", "0.5", *extra]
        self.process: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0, after: int = 0) -> None:
        wait_until(lambda: text in self.log()[after:] or self.process.poll() is not None, timeout, what=text)
        assert text in self.log()[after:], f"agent exited before {text!r}:\n{self.log()[-3000:]}"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def agents() -> list[AgentProcess]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def counted_inferences(port: int) -> float:
    """The agent's own count of inferences, from its local /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgeship_inferences_total"))


def test_sigterm_flushes_the_outbox_and_exits_cleanly(tmp_path, releases, agents):
    # windows of an hour: nothing is reported on its own, all of it rides on the flush at SIGTERM
    server = ServerProcess(tmp_path / "server", releases["keys"]["public"], report_seconds=3600).start()
    try:
        server.publish(releases["releases"]["1"])
        server.set_stable(MODEL, "1")
        port = free_port()
        agent = AgentProcess(tmp_path / "agent", server.url, server, releases,
                             "--workload", releases["eval"], "--rate", "40", "--metrics-port", str(port))
        agents.append(agent.start())
        agent.wait_for(f"now running {MODEL} v1")
        wait_until(lambda: counted_inferences(port) >= 20, what="20 inferences counted by the agent")
        counted = counted_inferences(port)
        assert server.reports() == []  # they are all in the window open when the signal comes
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(timeout=60) == 0
        log = agent.log()
        assert "stopped:" in log and "Traceback" not in log
        with Outbox(agent.state_dir / "outbox.sqlite") as outbox:
            assert len(outbox) == 0  # everything it measured reached the server
        rows = server.reports()
        stopped = json.loads(log.split("stopped: ", 1)[1].splitlines()[0])
        assert stopped["outbox"] == 0
        assert sum(r["inferences"] for r in rows) >= counted
        assert sum(r["labelled"] for r in rows) == sum(r["inferences"] for r in rows)
    finally:
        server.stop()


def test_kill_9_mid_download_restarts_on_the_old_model_and_resumes(tmp_path, server, releases, agents):
    proxy = ThrottlingProxy(server.url).start()
    try:
        first = AgentProcess(tmp_path / "agent", proxy.url, server, releases)
        agents.append(first.start())
        first.wait_for(f"now running {MODEL} v1")
        proxy.bytes_per_second = 20_000  # v2's download now takes seconds
        server.set_stable(MODEL, "2")
        first.wait_for(f"installing {MODEL} v2")
        v2 = json.loads((Path(releases["releases"]["2"]) / "manifest.json").read_text())
        shas = {v["sha256"] for v in v2["variants"]}
        wait_until(lambda: any(proxy.sent(s) >= 8192 for s in shas), what="part of v2 downloaded")
        first.kill()  # SIGKILL: no cleanup of any kind
        sha = next(s for s in shas if proxy.sent(s) >= 8192)
        partial = ModelStore(first.state_dir / "models").partial_path(sha)
        size = int(v2["variants"][[v["sha256"] for v in v2["variants"]].index(sha)]["size_bytes"])
        kept = partial.stat().st_size
        assert 0 < kept < size

        mark = len(first.log())
        second = AgentProcess(first.state_dir, proxy.url, server, releases)
        agents.append(second.start())
        second.wait_for(f"restored {MODEL} v1", after=mark)  # the old model serves at once
        proxy.bytes_per_second = None
        second.wait_for(f"now running {MODEL} v2", after=mark)
        ranges = proxy.requests_for(sha)
        assert ranges[0] is None and ranges[-1] is not None
        resumed_from = int(ranges[-1].removeprefix("bytes=").split("-")[0])
        assert resumed_from >= kept > 0  # it asked only for what it did not have
        assert ModelStore(first.state_dir / "models").verify_blob(sha)
    finally:
        proxy.stop()
