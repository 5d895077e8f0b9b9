"""Edge agent benchmark: inference overhead, resident memory and rollback time, in one run.

    python -m benchmarks.agent_bench [--quick] [--seconds 20] [--rounds 10] [--interval 1.0]

Everything runs against a real ``edgeship server`` subprocess (``tests/edge_agent/harness.py``)
with signed releases built once by ``benchmarks/agent_releases.py`` (cached under ``--cache``):
the digits CNN v1/v2 and a ResNet-style network (1.6M parameters), each as ``onnx-fp32`` and
``tflite-fp32``. Three measurements (issue 5, "Benchmark"):

1. inference: ``Agent.predict`` (window recording on, local metrics off) next to a bare
   ``open_runner(...).run`` loop on the same model file and the same inputs, in alternating
   blocks, per model and runtime: p50, p95 and the p50 ratio (target <= 1.05, judged on the
   median over block pairs of each pair's p50 ratio); plus where the agent's per-call time goes
   (``predict`` on a no-op runtime, and each piece of it alone);
2. resident memory: fresh ``python -c`` processes, an agent without a model (target <= 60 MiB)
   and with the digits model per runtime (``benchmarks/agent_rss.py``);
3. rollback: from the abort of a canary rollout on the server to the agent running the stable
   model again, in check-in intervals (target <= 1; ``benchmarks/agent_rollback.py``).

Progress goes to stderr, the tables to stdout; the results to ``benchmarks/results/agent_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.results_file import load_before_run, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "agent_bench.json"
DIGITS = "digits-cnn"
LARGE = "resnet-style"
RUNTIMES = ("onnxruntime", "litert")
TARGETS = {"p50_ratio": 1.05, "rss_no_model_mib": 60.0, "rollback_intervals": 1.0}
MIB = 2**20


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    """This environment with the repository importable and without operator or agent settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHIP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def build_releases(cache: Path) -> dict[str, Any]:
    """The signed releases (``benchmarks/agent_releases.py`` in its own process: torch stays out
    of this one). Cached: the first run trains and converts for a few minutes."""
    log(f"releases: digits-cnn v1/v2 and {LARGE} v1 (onnx-fp32, tflite-fp32) in {cache} "
        "(built once; the first run trains and converts for a few minutes)")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "benchmarks.agent_releases", "--out", str(cache)],
                          capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=3600,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the releases failed: {done.stderr[-2000:]}")
    releases = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"  ready in {time.monotonic() - started:.1f}s")
    return releases


def start_server(work: Path, releases: dict[str, Any]):
    """A fresh server with both models published and v1 stable; its controller effectively off
    (runs hourly), so only the benchmark moves rollouts."""
    from tests.edge_agent.harness import ServerProcess

    server = ServerProcess(work / "server", releases["keys"]["public"], report_seconds=5,
                           controller_seconds=3600.0)
    started = time.monotonic()
    server.start()
    try:
        for path in (*releases["digits"]["releases"].values(), releases[LARGE]["release"]):
            if not path.endswith("golden-mismatch"):
                server.publish(path)
        server.set_stable(DIGITS, "1")
        server.set_stable(LARGE, "1")
    except BaseException:
        server.stop()
        raise
    log(f"server {server.url}: published {DIGITS} v1, v2 and {LARGE} v1, v1 stable "
        f"({time.monotonic() - started:.1f}s)")
    return server


def agent_config(server, releases: dict[str, Any], state_dir: Path, model: str, **overrides: Any):
    from edge_agent.config import AgentConfig

    values: dict[str, Any] = dict(
        server=server.url, model=model, state_dir=state_dir, enroll_token=server.enroll,
        trusted_keys=[Path(releases["keys"]["public"])], device_class="bench", threads=1,
        backoff_initial_seconds=0.2, backoff_max_seconds=2.0)
    values.update(overrides)
    return AgentConfig(**values)


def start_agent(config, runtime: str | None):
    """An agent offering only ``runtime`` (all installed runtimes when None), running its model."""
    from benchmarks.agent_rollback import wait_for
    from edge_agent.agent import Agent
    from edge_agent.device import describe, installed_runtimes

    runtimes = installed_runtimes()
    if runtime is not None:
        runtimes = {runtime: runtimes[runtime]}
    agent = Agent(config, device=describe("bench", runtimes=runtimes)).start()
    try:
        wait_for(lambda: agent.current is not None, 120, f"{config.model} installed")
    except BaseException:
        agent.stop(flush_timeout_seconds=0)
        raise
    return agent


# -- 1. inference ------------------------------------------------------------------------------

def run_inference(server, releases: dict[str, Any], work: Path,
                  opts: argparse.Namespace) -> tuple[list[dict], dict[str, float]]:
    """Agent vs bare per model and runtime; the overhead breakdown on the digits ONNX model."""
    from benchmarks.agent_inference import bare_runner, input_feeds, overhead_breakdown, paired_latencies

    evals = {DIGITS: releases["digits"]["eval"], LARGE: releases[LARGE]["eval"]}
    rows: list[dict] = []
    breakdown: dict[str, float] = {}
    for model in (DIGITS, LARGE):
        for runtime in RUNTIMES:
            config = agent_config(server, releases, work / f"agent-{model}-{runtime}", model)
            agent = start_agent(config, runtime)
            try:
                loaded = agent.current
                path = agent.store.blob_path(loaded.release.sha256)
                bare = bare_runner(loaded, path, config.threads)
                feeds = input_feeds(Path(evals[model]), loaded.input_names[0])
                log(f"inference: {model} {loaded.variant_id} on {loaded.runner.runtime}: agent and bare "
                    f"in alternating blocks for ~{opts.seconds:g}s")
                result = paired_latencies(agent, bare, feeds, opts.seconds)
                version = loaded.runner.version  # onnxruntime's is the bare version number
                runtime_label = version if " " in version else f"{loaded.runner.runtime} {version}"
                row = {"model": model, "variant": loaded.variant_id, "runtime": runtime_label,
                       **result.summary()}
                # judged on the paired ratio: each block pair saw the same load (the pooled p50s
                # can still be moved by a burst of other load that hit one side's blocks more)
                row["target_met"] = row["pair_ratio_median"] <= TARGETS["p50_ratio"]
                rows.append(row)
                log(f"  bare p50 {row['bare_p50_ms']:.4f} ms, agent p50 {row['agent_p50_ms']:.4f} ms, "
                    f"ratio {row['p50_ratio']:.3f}, paired {row['pair_ratio_median']:.3f} "
                    f"({row['calls_per_side']:,} calls per side in {row['block_pairs']} block pairs; "
                    f"per-pair ratio quartiles {row['pair_ratio_quartiles']})")
                if model == DIGITS and runtime == "onnxruntime":
                    log("  where predict's time goes: a no-op runtime, and each piece alone")
                    breakdown = overhead_breakdown(
                        loaded, agent_config(server, releases, work / "agent-overhead", model), feeds[0],
                        label=0, rounds=opts.breakdown_rounds)
            finally:
                agent.stop(flush_timeout_seconds=1.0)
    return rows, breakdown


# -- 2. memory ----------------------------------------------------------------------------------

def run_memory(server, releases: dict[str, Any], work: Path, opts: argparse.Namespace) -> list[dict]:
    """Resident memory per case, each in a fresh interpreter."""
    from benchmarks.agent_rss import measure_rss

    base = {"server": server.url, "trusted_key": str(Path(releases["keys"]["public"]).resolve()),
            "enroll_token": server.enroll, "settle_seconds": opts.settle, "timeout_seconds": 120}
    cases = [
        ("python -c (interpreter only)", {"case": "interpreter"}),
        ("import edge_agent.agent", {"case": "import"}),
        ("agent started, no model", {"case": "no-model", "model": "no-release-model"}),
        *[(f"agent + {DIGITS} ({runtime})", {"case": "model", "model": DIGITS, "runtime": runtime})
          for runtime in RUNTIMES],
    ]
    rows = []
    for index, (label, case) in enumerate(cases):
        spec = {**base, **case, "state_dir": str(work / f"rss-{index}")}
        started = time.monotonic()
        measured = measure_rss(spec, child_env(), ROOT)
        status = measured.get("status") or {}
        row = {"case": label, "rss_mib": measured["VmRSS"] / MIB, "peak_rss_mib": measured["VmHWM"] / MIB,
               "modules": measured["modules"], "runtimes_imported": measured["runtimes_imported"],
               "model": status.get("model"), "variant": status.get("variant")}
        if case["case"] == "no-model":
            row["target_met"] = row["rss_mib"] <= TARGETS["rss_no_model_mib"] and row["model"] is None
        rows.append(row)
        log(f"memory: {label}: VmRSS {row['rss_mib']:.1f} MiB, peak {row['peak_rss_mib']:.1f} MiB"
            + (f", running {row['variant']}" if row["variant"] else "")
            + f" ({time.monotonic() - started:.1f}s)")
    return rows


# -- 3. rollback --------------------------------------------------------------------------------

def run_rollback(server, releases: dict[str, Any], work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Rollback rounds against one agent with check-in interval ``--interval``."""
    from benchmarks.agent_rollback import measure_rollbacks

    config = agent_config(server, releases, work / "agent-rollback", DIGITS,
                          check_interval_seconds=opts.interval)
    log(f"rollback: {opts.rounds} rounds, check-in interval {opts.interval:g}s, rollout of v2 at 99.99% "
        "then abort")
    agent = start_agent(config, "onnxruntime")
    try:
        result = measure_rollbacks(agent, server.api, DIGITS, opts.rounds, progress=log)
    finally:
        agent.stop(flush_timeout_seconds=1.0)
    summary = result.summary()
    summary["target_met"] = summary["max_intervals"] <= TARGETS["rollback_intervals"]
    return summary


# -- output -------------------------------------------------------------------------------------

def _fixed(head: tuple[str, ...], lines: list[tuple[str, ...]], left: int) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i < left or i == len(widths) - 1 else f"{{:>{w}}}"
                    for i, w in enumerate(widths))
    return [fmt.format(*line).rstrip() for line in [head, *lines]]


def _yes(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def tables(inference: list[dict], memory: list[dict], rollback: dict[str, Any] | None) -> str:
    """The three result tables as fixed-width text (also pasted into docs/benchmarks-agent.md)."""
    out: list[str] = []
    if inference:
        out.append("inference, batch of 1, 1 intra-op thread (agent = Agent.predict, bare = runner.run)")
        out += _fixed(
            ("model", "variant", "runtime", "calls/side", "bare p50 ms", "bare p95 ms", "agent p50 ms",
             "agent p95 ms", "overhead us", "p50 ratio", "paired p50 ratio: median [IQR]", "<= 1.05"),
            [(r["model"], r["variant"], r["runtime"], f"{r['calls_per_side']:,}", f"{r['bare_p50_ms']:.4f}",
              f"{r['bare_p95_ms']:.4f}", f"{r['agent_p50_ms']:.4f}", f"{r['agent_p95_ms']:.4f}",
              f"{r['overhead_p50_us']:+.2f}", f"{r['p50_ratio']:.3f}",
              "{:.3f} [{:.3f}-{:.3f}]".format(r["pair_ratio_median"], r["pair_ratio_quartiles"][0],
                                              r["pair_ratio_quartiles"][2]),
              _yes(r["target_met"]))
             for r in inference], left=3)
    if memory:
        out += ["", "resident memory, fresh process each (VmRSS after settling; peak = VmHWM)"]
        out += _fixed(
            ("case", "VmRSS MiB", "peak MiB", "modules", "runtimes imported", "<= 60 MiB"),
            [(r["case"], f"{r['rss_mib']:.1f}", f"{r['peak_rss_mib']:.1f}", str(r["modules"]),
              ", ".join(r["runtimes_imported"]) or "none", _yes(r.get("target_met"))) for r in memory],
            left=1)
    if rollback:
        r = rollback
        out += ["", f"rollback: abort answered -> agent runs the stable v1 (check-in interval C = "
                    f"{r['check_interval_seconds']:g} s; v1 still on disk, no download: "
                    f"{'yes' if not r['download_needed'] else 'NO'})"]
        out += _fixed(
            ("rounds", "median C", "max C", "median s", "max s", "wait for check-in s (median)",
             "check-in + swap s (median / max)", "<= 1 C"),
            [(str(r["rounds"]), f"{r['median_intervals']:.2f}", f"{r['max_intervals']:.2f}",
              f"{r['median_seconds']:.3f}", f"{r['max_seconds']:.3f}",
              f"{r['waiting_for_check_in_median_seconds']:.3f}",
              f"{r['check_in_and_swap_median_seconds']:.3f} / {r['check_in_and_swap_max_seconds']:.3f}",
              _yes(r["target_met"]))], left=0)
    return "\n".join(out)


def breakdown_table(breakdown: dict[str, float]) -> str:
    lines = ["where predict's time goes (digits onnx-fp32 model object, no-op runtime; best of rounds):"]
    width = max(len(k) for k in breakdown)
    lines += [f"  {name:<{width}}  {ns:8.0f} ns" for name, ns in breakdown.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets are reported, not enforced), 2 when interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter: 10 s per model and runtime, 4 rollback rounds (~1 min)")
    parser.add_argument("--seconds", type=float, help="inference time per model and runtime (default 20)")
    parser.add_argument("--rounds", type=int, help="rollback rounds (default 10)")
    parser.add_argument("--interval", type=float, default=1.0, help="check-in interval C, s (default 1)")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "agent-bench",
                        help="where the releases are built and kept (default build/agent-bench)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    opts = parser.parse_args(argv)
    opts.seconds = opts.seconds or (10.0 if opts.quick else 20.0)
    opts.rounds = opts.rounds or (4 if opts.quick else 10)
    opts.settle = 1.0 if opts.quick else 2.0
    opts.breakdown_rounds = 20 if opts.quick else 60
    load_before = load_before_run(log, "ratios are paired (alternating blocks)")
    started = time.monotonic()
    releases = build_releases(opts.cache.resolve())
    inference: list[dict] = []
    memory: list[dict] = []
    rollback: dict[str, Any] | None = None
    breakdown: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgeship-agent-bench-") as tmp:
        work = Path(tmp)
        server = start_server(work, releases)
        try:
            inference, breakdown = run_inference(server, releases, work, opts)
            memory = run_memory(server, releases, work, opts)
            rollback = run_rollback(server, releases, work, opts)
        except KeyboardInterrupt:
            log("interrupted; server stopped")
            return 2
        except Exception:
            log(f"server log tail:\n{server.log_tail()}")
            raise
        finally:
            server.stop()
    text = tables(inference, memory, rollback)
    print(text + "\n\n" + breakdown_table(breakdown), flush=True)
    write_results(opts.out, text, load_before,
                  settings={"quick": opts.quick, "seconds_per_model_runtime": opts.seconds,
                            "rounds": opts.rounds,
                            "check_interval_seconds": opts.interval, "threads": 1, "local_metrics": False,
                            "rss_settle_seconds": opts.settle,
                            "wall_seconds": round(time.monotonic() - started, 1)},
                  targets=TARGETS, inference=inference,
                  predict_breakdown_ns={k: round(v, 1) for k, v in breakdown.items()},
                  memory=memory, rollback=rollback)
    log(f"wrote {opts.out} ({time.monotonic() - started:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
