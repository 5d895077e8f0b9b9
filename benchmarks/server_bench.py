"""Rollout server benchmark: assignment and report ingestion under load, next to a bare Flask app.

    python -m benchmarks.server_bench [--seconds 10] [--repeat 1] [--workers 2] [--skip-postgres]

For each backend (a SQLite file; a throwaway PostgreSQL from ``tests/rollout_server/postgres.py``)
it starts ``edgeship server --workers K`` (uvicorn workers) on a free loopback port with a fresh data
directory, and sets it up through the HTTP API only: publishes a small release signed by hand
with a throwaway key (trusted through ``EDGESHIP_TRUSTED_KEYS``), makes it stable and registers
``--devices`` devices. Load comes from a separate process, ``wrk`` with the Lua scripts in
``benchmarks/wrk/``:

* ``assignment``: ``GET /v1/devices/<id>/assignment?model=...`` cycling over the devices, each
  with its own credential, no ``If-None-Match`` (full 200 answers);
* ``assignment-304``: the same with the device's current ETag in ``If-None-Match`` (304s);
* ``ingest x1`` / ``ingest x10``: ``POST /v1/reports`` with 1 or 10 reports per request, every
  report id unique; counted as reports/s. The stored report count is checked afterwards.

In the same run, ``benchmarks/bare_app.py`` (one JSON GET, one JSON POST, no database) is served
by the same server (``rollout_server.serve.run``, same workers) and gets the same requests, each
scenario right before edgeship's (paired, so both see the same machine load); the ratio column is
edgeship's requests/s over the bare app's. ``--repeat N`` runs every pair N times and reports
medians (each ratio per pair). The CPU column is user+system time of the server's worker processes
per request (not PostgreSQL's, not wrk's), which other load on the machine disturbs much less than
req/s; "CPU vs bare" is the bare app's CPU per request over edgeship's in the same pair (shown
beside the target's ratio, not instead of it: it leaves out PostgreSQL's own CPU).
Prints one table and writes ``benchmarks/results/server.json``; ``--profile`` also samples the
workers with py-spy. Every process it starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.results_file import load_before_run, write_results
from benchmarks.server_results import TARGETS, Row, judge, median_row, table
from benchmarks.server_setup import (
    MODEL,
    VERSION,
    make_release,
    report_template,
    setup_server,
    stored_reports,
)
from benchmarks.wrk_runner import Scenario, Served, WrkResult, free_port, run_wrk

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "server.json"


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def edgeship_command() -> list[str]:
    """How to run the ``edgeship`` CLI of this checkout with this interpreter."""
    script = Path(sys.executable).with_name("edgeship")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from edgeship.cli import main; sys.exit(main())"]


def base_env(**extra: str) -> dict[str, str]:
    """The environment for server processes: ours, minus any EDGESHIP_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHIP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# -- setup through the HTTP API ----------------------------------------------------------------

SCENARIO_NAMES = ("assignment", "assignment-304", "ingest x1", "ingest x10")


def edgeship_scenarios(devices_file: Path, template: Path, run_id: str) -> list[Scenario]:
    """Assignment (200 and 304) and ingestion (1 and 10 reports per request)."""
    devices, report = str(devices_file), str(template)
    return [
        Scenario("assignment", "assignment.lua", [devices, MODEL], "assignment"),
        Scenario("assignment-304", "assignment.lua", [devices, MODEL, "etag"], "assignment",
                 ok_statuses=(304,)),
        Scenario("ingest x1", "reports.lua", [devices, report, "1", f"{run_id}-1"], "ingest", 1),
        Scenario("ingest x10", "reports.lua", [devices, report, "10", f"{run_id}-10"], "ingest", 10),
    ]


def bare_twin(scenario: Scenario) -> Scenario:
    """The same requests against the bare app (which answers 200 to all of them)."""
    args = [*scenario.args[:3], f"bare-{scenario.args[3]}"] if scenario.kind == "ingest" else scenario.args
    return Scenario(scenario.name, scenario.script, args, "bare", scenario.reports_per_request)


def fresh_ids(scenario: Scenario, attempt: int) -> Scenario:
    """The scenario for repetition ``attempt``: ingestion gets report ids no earlier run used."""
    if scenario.kind != "ingest" or attempt == 0:
        return scenario
    args = [*scenario.args[:3], f"{scenario.args[3]}-r{attempt}"]
    return Scenario(scenario.name, scenario.script, args, scenario.kind, scenario.reports_per_request,
                    scenario.ok_statuses)


def measure(backend: str, server: Served, scenario: Scenario,
            opts: argparse.Namespace) -> tuple[Row, WrkResult]:
    """One scenario for ``opts.seconds``, logged as it finishes."""
    log(f"  {backend}: {scenario.name} for {opts.seconds:g}s (wrk -t{opts.wrk_threads} -c{opts.connections})")
    before = server.cpu_by_process()
    result = run_wrk(server.url, scenario, opts.seconds, opts.wrk_threads, opts.connections)
    used = {pid: seconds - before.get(pid, 0.0) for pid, seconds in server.cpu_by_process().items()}
    cpu = sum(used.values())
    workers = [seconds for pid, seconds in used.items() if pid != server.process.pid]
    per_request = scenario.reports_per_request
    reports = result.requests_per_s * per_request if per_request else None
    row = Row(backend, scenario.name, result.requests_per_s, reports, result.p50_ms, result.p99_ms,
              result.non_2xx, requests=result.requests, statuses=result.statuses,
              socket_errors=result.socket_errors)
    if result.requests:
        row.cpu_ms_per_request = 1e3 * cpu / result.requests
    if sum(workers) > 0:
        row.busiest_worker_share = max(workers) / sum(workers)
    log(f"    {result.requests_per_s:,.0f} req/s" + (f", {reports:,.0f} reports/s" if reports else "")
        + f", p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
        + f"server CPU {row.cpu_ms_per_request or 0:.2f} ms/request"
        + f" (busiest worker {100 * (row.busiest_worker_share or 0):.0f}%), statuses {result.statuses}"
        + (f", socket errors {result.socket_errors}" if any(result.socket_errors.values()) else ""))
    return row, result


def start_bare(work: Path, opts: argparse.Namespace) -> Served:
    """The bare app, served like edgeship (same server and workers), ready."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.bare_app", "--port", str(port),
               "--workers", str(opts.workers)]
    server = Served("bare app", command, base_env(), work / "bare.log", port)
    log(f"bare Flask app: {opts.workers} workers on {server.url}")
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def run_backend(backend: str, db_url: str | None, work: Path, opts: argparse.Namespace, release_dir: Path,
                public_key: Path, template: Path, bare: Served) -> list[Row]:
    """Start ``edgeship server`` on ``db_url`` (SQLite in the data dir if None), set it up, and run
    every scenario right after the same requests against the bare app (paired, so both see the
    same machine load). Returns edgeship's rows, then the bare app's."""
    data_dir = work / f"data-{backend}"
    port = free_port()
    command = [*edgeship_command(), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(opts.workers), "--data-dir", str(data_dir)]
    if db_url:
        command += ["--db", db_url]
    server = Served(f"edgeship server ({backend})", command, base_env(EDGESHIP_TRUSTED_KEYS=str(public_key)),
                    work / f"server-{backend}.log", port)
    try:
        log(f"{backend}: edgeship server --workers {opts.workers} on {server.url}")
        server.wait_ready()
        started = time.monotonic()
        devices_file = work / f"devices-{backend}.txt"
        setup_server(server.url, data_dir, release_dir, opts.devices, devices_file)
        log(f"  {backend}: published {MODEL} {VERSION}, set stable, registered {opts.devices} devices "
            f"({time.monotonic() - started:.1f}s)")
        scenarios = edgeship_scenarios(devices_file, template, f"{backend}-{uuid.uuid4().hex[:8]}")
        warmup = scenarios[0]
        if opts.scenario:
            scenarios = [s for s in scenarios if s.name in opts.scenario]
        log(f"  {backend}: warm-up {opts.warmup:g}s each (assignment, bare GET)")
        run_wrk(server.url, warmup, opts.warmup, opts.wrk_threads, opts.connections)
        run_wrk(bare.url, bare_twin(warmup), opts.warmup, opts.wrk_threads, opts.connections)
        before = stored_reports(server.url) or 0
        rows, bare_rows, acknowledged, slack = [], [], 0, 0
        for scenario in scenarios:
            runs, bare_runs = [], []
            for attempt in range(opts.repeat):
                run = fresh_ids(scenario, attempt)
                bare_row, _ = measure(f"bare:{backend}", bare, bare_twin(run), opts)
                row, result = measure(backend, server, run, opts)
                if bare_row.requests_per_s:
                    row.ratio_to_bare = row.requests_per_s / bare_row.requests_per_s
                if bare_row.cpu_ms_per_request and row.cpu_ms_per_request:
                    row.cpu_ratio_to_bare = bare_row.cpu_ms_per_request / row.cpu_ms_per_request
                runs.append(row)
                bare_runs.append(bare_row)
                acknowledged += result.statuses.get(200, 0) * scenario.reports_per_request
                slack += opts.connections * scenario.reports_per_request  # in flight when wrk stopped
            row = median_row(runs)
            judge(row)
            rows.append(row)
            bare_rows.append(median_row(bare_runs))
        stored = stored_reports(server.url)
        if stored is not None:
            stored -= before
            fine = acknowledged <= stored <= acknowledged + slack
            log(f"  {backend}: {stored:,} reports stored, {acknowledged:,} acknowledged to wrk "
                + ("(the rest were in flight when wrk stopped)" if fine else "-- MISMATCH"))
        if opts.profile:
            profile(server, backend, scenarios, opts)
        return rows + bare_rows
    except Exception:
        log(f"{backend}: server log tail:\n{server.log_tail()}")
        raise
    finally:
        server.stop()


def profile(server: Served, backend: str, scenarios: list[Scenario], opts: argparse.Namespace) -> None:
    """py-spy the workers under load, each scenario in turn: folded stacks per worker in
    ``benchmarks/results/profiles/`` (feed them to a flame graph tool, or count frames). Only
    threads holding the GIL are sampled (``--gil``): where Python spends CPU, not where threads
    wait; time in SQLite, the kernel and other C code is not in it."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        log("  profile: py-spy not installed (pip install py-spy); skipped")
        return
    out_dir = opts.out.parent / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    for scenario in scenarios:
        if scenario.kind == "ingest":  # fresh report ids
            args = [*scenario.args[:3], f"prof-{scenario.args[3]}"]
            scenario = Scenario(scenario.name, scenario.script, args, "ingest", scenario.reports_per_request)
        stem = f"{backend}-{scenario.name.replace(' ', '')}"
        spies = [subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", str(int(opts.seconds)), "--rate", "200",
             "--gil", "--format", "raw", "--output", str(out_dir / f"{stem}-{pid}.txt"), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in server.worker_pids()]
        time.sleep(0.5)
        log(f"  profile {backend} {scenario.name}: py-spy on {len(spies)} workers")
        try:
            run_wrk(server.url, scenario, opts.seconds, opts.wrk_threads, opts.connections)
        finally:
            for spy in spies:
                try:
                    spy.wait(timeout=opts.seconds + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
        log(f"    folded stacks: {out_dir}/{stem}-*.txt")


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh database on a throwaway PostgreSQL (``tests/rollout_server/postgres.py``)."""
    from tests.rollout_server.postgres import postgresql_server

    servers = postgresql_server()
    server = next(servers)  # pytest's skip/fail (BaseException) when PostgreSQL is missing
    try:
        log(f"postgresql: throwaway cluster on 127.0.0.1:{server.port} "
            f"(started in {server.startup_seconds:.1f}s)")
        yield server.create_database("edgeship_bench")
    finally:
        servers.close()  # stops the cluster and removes its directory


def wrk_version() -> str:
    """``wrk -v``'s first line."""
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets are reported, not enforced), 2 when interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured wrk run (default: 10)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="paired runs per scenario; the table shows their medians (default: 1)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per server (default: 2)")
    parser.add_argument("--workers", type=int, default=2, help="server workers, at least 2 (default: 2)")
    parser.add_argument("--devices", type=int, default=500, help="devices to register (default: 500)")
    parser.add_argument("--connections", type=int, default=8,
                        help="wrk connections (default: 8, the server's 2 workers x 4 threads)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default: 1)")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--scenario", action="append", choices=SCENARIO_NAMES,
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, py-spy the workers under load (folded stacks in "
                        "benchmarks/results/profiles/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS})")
    opts = parser.parse_args(argv)
    if opts.workers < 2:
        parser.error("--workers must be at least 2")
    if opts.repeat < 1:
        parser.error("--repeat must be at least 1")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    from edgeship.contract.signing import generate_keypair

    load_before = load_before_run(log, "the ratio to the bare app is paired per scenario")
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        private, public = generate_keypair(work / "keys", "bench")
        release_dir = make_release(work / "release", private)
        template = work / "report.json"
        template.write_text(report_template())
        backends: list[tuple[str, Any]] = [("sqlite", contextlib.nullcontext(None))]
        if not opts.skip_postgres:
            backends.append(("postgresql", postgres_url()))
        try:
            bare = start_bare(work, opts)
            stack.callback(bare.stop)
            for name, context in backends:
                try:
                    with context as db_url:
                        rows += run_backend(name, db_url, work, opts, release_dir, public, template, bare)
                except ImportError as err:
                    skipped[name] = str(err)
                except Exception as err:
                    if type(err).__module__.startswith(("_pytest", "pytest")):  # PostgreSQL missing
                        skipped[name] = str(err)
                    else:
                        raise
                if name in skipped:
                    log(f"{name}: skipped: {skipped[name]}")
        except KeyboardInterrupt:
            log("interrupted; servers stopped")
            return 2
    text = table(rows)
    print(text, flush=True)
    write_results(opts.out, text, load_before, {"wrk": wrk_version()},
                  settings={"seconds": opts.seconds, "repeat": opts.repeat, "warmup": opts.warmup,
                            "workers": opts.workers, "devices": opts.devices, "wrk_threads": opts.wrk_threads,
                            "connections": opts.connections, "server": "rollout_server.serve.run"},
                  targets=TARGETS, skipped=skipped, rows=[asdict(row) for row in rows])
    log(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
