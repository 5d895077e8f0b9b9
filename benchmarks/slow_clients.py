"""Slow-client benchmark: ``/healthz`` latency while 200 sockets trickle headers or bodies.

    python -m benchmarks.slow_clients [--seconds 15] [--sockets 200] [--skip-old]

For each server it starts one on a free loopback port with a fresh SQLite data directory:
``edgeship server`` (one process) and ``edgeship server --workers 2``, and for comparison the
serving this replaced (issue 19), run directly: werkzeug's threaded server (the old one-worker
mode) and gunicorn ``gthread`` 2 workers x 4 threads (the old ``--workers 2``; skipped when
gunicorn is not installed). Against each, three phases of ``--seconds``:

* ``none``: no attack;
* ``slow headers``: ``--sockets`` connections each send a request line, then one header byte
  line per second, never finishing their headers (Slowloris);
* ``slow bodies``: ``--sockets`` connections each send complete headers of a 100 kB report,
  then one body byte per second.

An attacker whose socket the server closes opens a new one at once, so the pressure stays at
``--sockets``. Meanwhile one client asks ``GET /healthz`` 20 times a second, each on a new
connection with a 2-s timeout, and the table shows its p50/p99/max and failures. Target
(issue 19): p99 under 100 ms during both attacks, for the edgeship modes. Prints the table and
writes ``benchmarks/results/slow_clients.json``; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import os
import selectors
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.results_file import write_results
from benchmarks.wrk_runner import Served, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "slow_clients.json"
TARGET_P99_MS = 100.0
PROBE_INTERVAL_SECONDS = 0.05
PROBE_TIMEOUT_SECONDS = 2.0
ATTACKS = {
    "none": None,
    "slow headers": (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-a: b\r\n"),
    "slow bodies": (b"POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n", b" "),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _readable(sockets: list[socket.socket]) -> set[socket.socket]:
    """Those of ``sockets`` with something to read (an answer, or closed) right now; a selector,
    since ``select.select`` cannot watch descriptors above 1,023."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        return {key.fileobj for key, _ in selector.select(0)}


@dataclass
class Row:
    server: str
    attack: str
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    probes: int
    failures: int
    sockets_open_at_end: int = 0
    sockets_cut_off: int = 0
    target_met: bool | None = None
    errors: dict[str, int] = field(default_factory=dict)


# -- the attack --------------------------------------------------------------------------------

class Attack(threading.Thread):
    """``count`` sockets that send ``head``, then ``piece`` every ``pace_seconds``; a socket the
    server answers or closes is replaced by a new one (``cut_off`` counts them)."""

    def __init__(self, port: int, count: int, head: bytes, piece: bytes, pace_seconds: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.head, self.piece, self.pace = port, count, head, piece, pace_seconds
        self.sockets: list[socket.socket | None] = []
        self.cut_off = 0
        self.ready = threading.Event()
        self.stop_event = threading.Event()

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.sendall(self.head)
            sock.setblocking(False)
            return sock
        except OSError:
            return None

    def run(self) -> None:
        self.sockets = [self._open() for _ in range(self.count)]
        self.ready.set()
        while not self.stop_event.wait(self.pace):
            live = [s for s in self.sockets if s is not None]
            readable = _readable(live)
            for index, sock in enumerate(self.sockets):
                if sock is not None and sock not in readable:
                    try:
                        sock.send(self.piece)
                        continue
                    except OSError:
                        pass
                if sock is not None:
                    sock.close()
                    self.cut_off += 1
                self.sockets[index] = self._open()

    def stop(self) -> int:
        """Stop attacking; how many sockets were still open (neither answered nor closed)."""
        self.stop_event.set()
        self.join(timeout=10)
        live = [s for s in self.sockets if s is not None]
        readable = _readable(live)
        for sock in live:
            sock.close()
        return sum(1 for s in live if s not in readable)


# -- the probe -----------------------------------------------------------------------------------

def probe(port: int, seconds: float) -> tuple[list[float], dict[str, int]]:
    """``GET /healthz`` every :data:`PROBE_INTERVAL_SECONDS` on a new connection; latencies (ms)
    of the 200s, and the failures by kind."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_SECONDS)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(1e3 * (time.monotonic() - started))
            else:
                errors[f"HTTP {response.status}"] = errors.get(f"HTTP {response.status}", 0) + 1
        except (OSError, http.client.HTTPException) as err:
            kind = type(err).__name__
            errors[kind] = errors.get(kind, 0) + 1
        finally:
            connection.close()
        time.sleep(max(0.0, PROBE_INTERVAL_SECONDS - (time.monotonic() - started)))
    return latencies, errors


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the servers ---------------------------------------------------------------------------------

def servers(skip_old: bool) -> dict[str, tuple[list[str], bool]]:
    """name -> (command with ``{port}``, is one of edgeship's production modes)."""
    py = sys.executable
    found = {
        "edgeship 1 worker": ([py, "-m", "edgeship.cli", "server", "--port", "{port}"], True),
        "edgeship --workers 2": ([py, "-m", "edgeship.cli", "server", "--port", "{port}", "--workers", "2"],
                                 True),
    }
    if skip_old:
        return found
    found["old: werkzeug threaded"] = ([py, "-c", "from werkzeug.serving import run_simple; "
                                        "from rollout_server.serve import wsgi_app; "
                                        "run_simple('127.0.0.1', {port}, wsgi_app(), threaded=True)"], False)
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        log("gunicorn not installed: the old --workers 2 configuration is skipped")
    else:
        found["old: gunicorn gthread 2x4"] = ([py, "-m", "gunicorn", "--workers", "2", "--worker-class",
                                               "gthread", "--threads", "4", "--bind", "127.0.0.1:{port}",
                                               "rollout_server.serve:wsgi_app()"], False)
    return found


def run_server(name: str, command: list[str], production: bool, work: Path,
               opts: argparse.Namespace) -> list[Row]:
    port = free_port()
    data_dir = work / name.replace(" ", "-").replace(":", "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHIP_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               EDGESHIP_DATA_DIR=str(data_dir), EDGESHIP_CONTROLLER_INTERVAL_SECONDS="3600")
    command = [part.replace("{port}", str(port)) for part in command]
    if command[3:4] == ["server"]:
        command += ["--data-dir", str(data_dir)]
    server = Served(name, command, env, work / f"{data_dir.name}.log", port)
    rows = []
    try:
        server.wait_ready()
        log(f"{name}: ready on port {port}")
        for attack_name, attack_spec in ATTACKS.items():
            attack = None
            if attack_spec is not None:
                attack = Attack(port, opts.sockets, *attack_spec)
                attack.start()
                attack.ready.wait(timeout=120)
                time.sleep(1.0)  # every worker has seen its sockets
            latencies, errors = probe(port, opts.seconds)
            row = Row(name, attack_name, percentile(latencies, 0.5), percentile(latencies, 0.99),
                      max(latencies) if latencies else None, len(latencies) + sum(errors.values()),
                      sum(errors.values()), errors=errors)
            if attack is not None:
                row.sockets_open_at_end = attack.stop()
                row.sockets_cut_off = attack.cut_off
            if production:
                row.target_met = (row.failures == 0 and row.p99_ms is not None
                                  and row.p99_ms < TARGET_P99_MS)
            log(f"  {attack_name}: p50 {row.p50_ms or 0:.1f} ms, p99 {row.p99_ms or 0:.1f} ms, "
                f"max {row.max_ms or 0:.1f} ms, {row.failures}/{row.probes} failed {errors or ''}, "
                f"sockets open at the end {row.sockets_open_at_end}, cut off {row.sockets_cut_off}")
            rows.append(row)
            time.sleep(1.0)  # the server settles (closed sockets) before the next phase
    except Exception:
        log(f"{name}: server log tail:\n{server.log_tail()}")
        raise
    finally:
        server.stop()
    return rows


def table(rows: list[Row]) -> str:
    def ms(value: float | None) -> str:
        return f"{value:,.1f}" if value is not None else "-"

    header = (f"{'server':<27} {'attack':<13} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'failed':>9} {'open':>5} {'cut off':>7}  target")
    lines = [header]
    for r in rows:
        target = "-" if r.target_met is None else ("yes" if r.target_met else "NO")
        lines.append(f"{r.server:<27} {r.attack:<13} {ms(r.p50_ms):>8} {ms(r.p99_ms):>8} {ms(r.max_ms):>8} "
                     f"{f'{r.failures}/{r.probes}':>9} {r.sockets_open_at_end:>5} {r.sockets_cut_off:>7}  "
                     f"{target}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="each phase (default: 15)")
    parser.add_argument("--sockets", type=int, default=200, help="attacking sockets (default: 200)")
    parser.add_argument("--skip-old", action="store_true", help="only edgeship's own modes")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS})")
    opts = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgeship-slow-") as tmp:
        try:
            for name, (command, production) in servers(opts.skip_old).items():
                rows += run_server(name, command, production, Path(tmp), opts)
        except KeyboardInterrupt:
            log("interrupted; servers stopped")
            return 2
    text = table(rows)
    print(text, flush=True)
    write_results(opts.out, text, load_before,
                  settings={"seconds": opts.seconds, "sockets": opts.sockets,
                            "probe_interval_seconds": PROBE_INTERVAL_SECONDS,
                            "probe_timeout_seconds": PROBE_TIMEOUT_SECONDS},
                  target_p99_ms=TARGET_P99_MS, rows=[asdict(r) for r in rows])
    log(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
