"""Load-run plumbing for the server benchmark: wrk scenarios and their output, served processes.

Used by :mod:`benchmarks.server_bench`; kept apart so the benchmark module reads as the
experiment (set-up, scenarios, table) and this one as the tools it drives.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRK_DIR = ROOT / "benchmarks" / "wrk"


@dataclass
class Scenario:
    """One wrk run: a script and its arguments, what counts as success, how to compare it."""

    name: str
    script: str
    args: list[str]
    kind: str  # "assignment", "ingest" (which targets apply) or "bare"
    reports_per_request: int = 0
    ok_statuses: tuple[int, ...] = (200,)


@dataclass
class WrkResult:
    """What one wrk run measured (latencies in milliseconds)."""

    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    non_2xx: int  # responses with another status than expected, plus socket errors


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * _UNITS[unit]


def parse_wrk(output: str, ok_statuses: tuple[int, ...] = (200,)) -> WrkResult:
    """Parse ``wrk --latency`` output plus the status line our Lua ``done()`` prints."""
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.M)}
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if not (total and rps and 50 in percentiles and 99 in percentiles):
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    statuses: dict[int, int] = {}
    line = re.search(r"^edgeship-wrk-statuses(.*)$", output, re.M)
    for status, n in re.findall(r"(\d+)=(\d+)", line.group(1) if line else ""):
        statuses[int(status)] = int(n)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                             (int(n) for n in sockets.groups()) if sockets else (0, 0, 0, 0), strict=True))
    unexpected = sum(n for status, n in statuses.items() if status not in ok_statuses)
    non_2xx_line = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if not statuses and non_2xx_line:  # no status line (older script): fall back to wrk's count
        unexpected = int(non_2xx_line.group(1))
    return WrkResult(
        requests=int(total.group(1)), seconds=_ms(total.group(2) + total.group(3)) / 1e3,
        requests_per_s=float(rps.group(1)), p50_ms=percentiles[50], p99_ms=percentiles[99],
        statuses=statuses, socket_errors=socket_errors,
        non_2xx=unexpected + sum(socket_errors.values()),
    )


def run_wrk(url: str, scenario: Scenario, seconds: float, threads: int, connections: int) -> WrkResult:
    """Run wrk against ``url`` for ``seconds`` in its own process and parse what it printed."""
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
               "--timeout", "5s", "--latency", "-s", str(WRK_DIR / scenario.script), url, "--",
               *scenario.args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, scenario.ok_statuses)


# -- processes ---------------------------------------------------------------------------------

def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A server process group (the supervisor and its workers) started for the benchmark."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)

    def wait_ready(self, path: str = "/readyz", timeout: float = 90.0) -> None:
        """Poll ``path`` until it answers 200; raises if the process dies or time runs out."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """The workers: children of the supervisor process."""
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def cpu_by_process(self) -> dict[int, float]:
        """User + system CPU seconds used so far by each process: the master and its workers."""
        used = {}
        for pid in [self.process.pid, *self.worker_pids()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        return used

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server printed."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group (master and workers), SIGKILL it if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # workers left behind by a master that died first
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
