"""The demo's loop, smaller, with a real Prometheus scraping throughout; and Ctrl-C of ``edgeship demo``.

The loop test runs 20 real agents against a real server: 12 Python agents in 2 worker processes
and 8 phones (TypeScript SDK agents, android and ios, on onnxruntime-node) in one Node process.
The release whose golden set mismatches is rolled back with the load-failure guard's reason,
the good one is promoted stage by stage with phones in both arms, every agent of both kinds ends
on it, and then every dashboard panel's query (``panel_queries``) is valid and returns data
through Prometheus' ``/api/v1/query``.
"""

from __future__ import annotations

import io
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples.demo.fleet import FleetSettings
from examples.demo.processes import ROOT, child_env
from examples.demo.rollouts import GuardMinimums
from examples.demo.run import DemoConfig, DemoStack, run_loop
from examples.demo.summary import summary_lines
from tests.monitoring.conftest import require_binary
from tests.skip_policy import missing

MODEL = "digits-cnn"
#: how finely the run is searched for an instant at which a panel has data (scrapes are 1 s apart).
SCAN_STEP_SECONDS = 0.5


def small_loop(workdir: Path) -> DemoConfig:
    """The demo's loop at test scale: 20 agents (8 of them SDK phones), stages of 8 s, 1 s windows
    and scrapes.

    The stages are 45% and 55% (not 10% and 50%) so that 20 agents give both arms of every
    analysed stage the 3 devices the load-failure guard needs, with near certainty (a binomial
    tail of about 0.1% per stage). 8 phones rather than the demo's 20%: the phones miss the
    canary of the 55% stage, or the stable arm of the 45% stage, with probability 0.45^8 each
    (0.2%); with 4 it would be 4%.
    """
    return DemoConfig(
        workdir=workdir,
        fleet=FleetSettings(agents=20, workers=2, phone_share=0.4, rate_per_second=5.0,
                            check_interval_seconds=0.5, report_interval_seconds=1.0,
                            variant_backoff_seconds=5.0),
        phones=True,
        stages=(45.0, 55.0, 100.0), stage_seconds=8.0, stage_samples=100,
        guards=GuardMinimums(error_rate=150, latency=100, accuracy=100, load_failures=3),
        report_seconds=1.0, controller_seconds=1.0, window_seconds=1.0, prometheus=True,
        scrape_interval="1s", view_window_seconds=5.0, print_every_seconds=5.0,
        fleet_timeout_seconds=120.0, rollback_timeout_seconds=60.0, promotion_timeout_seconds=120.0,
    )


def finite_values(answer: dict) -> list[float]:
    values = [float(r["value"][1]) for r in answer["data"]["result"]]
    return [v for v in values if math.isfinite(v)]


def first_data(prometheus, expr: str, started: float, ended: float) -> float | None:
    """The newest instant of the run at which ``expr`` returns a finite value, else None.

    A panel that compares with ``offset D`` has no data until Prometheus is ``D`` old; it is
    also evaluated as of ``D`` after the run, when the run's samples are its "before" side.
    """
    instants = [ended - i * SCAN_STEP_SECONDS for i in range(int((ended - started) / SCAN_STEP_SECONDS) + 1)]
    offset = re.search(r"offset (\d+)m", expr)
    if offset:
        instants.append(ended + 60 * int(offset.group(1)))
    for at in instants:
        if finite_values(prometheus.query(expr, at=at)):
            return at
    return None


ROLLBACK_ALERT = "EdgeshipRolloutRolledBack"


def alert_fires(prometheus, name: str, timeout_seconds: float = 180.0) -> bool:
    """Whether Prometheus reports alert ``name`` firing before ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if prometheus.query(f'ALERTS{{alertname="{name}", alertstate="firing"}}')["data"]["result"]:
            return True
        time.sleep(1.0)
    return False


def require_phones() -> None:
    """The phones' Node worker builds (skips without Node.js or sdk/js/node_modules; fails under CI)."""
    from examples.demo.fleet import phone_worker_command
    from examples.demo.typescript import Unavailable

    try:
        phone_worker_command()
    except Unavailable as err:
        missing(f"SDK phones in the demo: {err}")


PHONES = ("android", "ios")


def test_bad_release_rolls_back_good_one_is_promoted_and_every_panel_has_data(demo_workdir):
    require_binary("prometheus")
    require_phones()
    from examples.demo.prepare import cached_releases
    from tests.monitoring.panel_queries import panel_queries

    config = small_loop(demo_workdir)
    out = io.StringIO()
    with DemoStack(config, cached_releases(demo_workdir / "example"), out=out) as stack:
        started = time.time()
        result = run_loop(stack)
        ended = time.time()
        prometheus = stack.prometheus

        assert result.bad.phase == "rolled_back"
        assert result.bad.stage_seconds[-1][0] == 45.0  # rolled back in its first stage
        assert [guard for guard, _ in result.bad.failing] == ["load_failures"]
        assert "load/golden failure share 100%" in result.bad.reason
        assert result.refused_devices >= 3
        assert result.good.phase == "promoted"
        assert [percent for percent, _ in result.good.stage_seconds] == [45.0, 55.0]
        assert all(seconds >= config.stage_seconds for _, seconds in result.good.stage_seconds)
        assert result.final_versions == {"2": 20}
        assert {variant for variants in result.variants_by_class.values() for variant in variants} == {
            "onnx-fp32", "tflite-fp32"}  # the runtimes' mix gives different variants
        # the phones are SDK agents of their own classes, on onnxruntime, and took part throughout
        assert result.agents_by_kind == {"python": 12, "sdk": 8}
        assert {c for kind, c in result.variants_by_class if kind == "sdk"} == set(PHONES)
        assert {v for (kind, _), vs in result.variants_by_class.items() if kind == "sdk" for v in vs} == {
            "onnx-fp32"}
        # every canary device of every class that had one refused v3 (which classes had canary
        # devices is the split's luck: 4 devices per class at 45% leave a class out ~9% of the time)
        refused = {c: failed == canary for c, (failed, canary) in result.refused_by_class.items()}
        assert refused and all(refused.values()), result.refused_by_class
        phones_seen = {(cohort, version) for kind, c, cohort, version in result.good_arms_seen
                       if kind == "sdk" and c in PHONES}
        assert {("canary", "2"), ("stable", "1")} <= phones_seen  # phones in both arms of the good release
        assert {(kind, version) for kind, _, _, version in result.at_end.elements()} == {
            ("python", "2"), ("sdk", "2")}  # both kinds end on the promoted release
        assert sum(n for (kind, *_), n in result.at_end.items() if kind == "sdk") == 8
        summary = "\n".join(summary_lines(result, config, 0.0, prometheus.url, str(stack.run_dir)))
        assert re.search(r"at the promotion +python .*\n +sdk +android: .*ios: ", summary)
        # EdgeshipRolloutRolledBack fired: within the demo's own 30 s wait, or (a loaded host's
        # Prometheus evaluates late) while this test waits on the event itself
        assert result.rollback_alert_seconds is not None or alert_fires(prometheus, ROLLBACK_ALERT)

        queries = panel_queries({"model": MODEL})
        invalid = [(uid, title, answer.get("error")) for uid, title, expr in queries
                   if (answer := prometheus.query(expr))["status"] != "success"]
        assert invalid == []
        empty = [(uid, title) for uid, title, expr in queries
                 if first_data(prometheus, expr, started, ended) is None]
        assert empty == []
    printed = out.getvalue()
    assert "ROLLED BACK automatically" in printed and "PROMOTED" in printed
    assert re.search(r"canary\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+%", printed)  # the live view's canary row
    assert re.search(r"by kind: python .* · sdk ", printed)  # the live view shows both kinds
    assert "stopping" in printed


def process_tree(root: int) -> dict[int, str]:
    """``{pid: start time}`` of every descendant of ``root`` (from /proc)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = (int(fields[1]), fields[19])
    tree: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in parents.items():
            if ppid == parent and pid not in tree:
                tree[pid] = started
                frontier.append(pid)
    return tree


def alive(pid: int, started: str) -> bool:
    """True when ``pid`` is still the same process and not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def sigint_as_on_a_terminal() -> None:
    """In the demo's child, before exec: SIGINT at its default, as for a command typed at a terminal.
    A suite started in the background by a non-interactive shell (``cmd &``, some CI runners)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the demo
    would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("target", ["demo process", "process group"])
def test_ctrl_c_stops_every_process_the_demo_started(demo_workdir, tmp_path, target):
    """SIGINT to the demo alone, or to its whole process group as a terminal's Ctrl-C does."""
    log = tmp_path / "demo.log"
    with log.open("wb") as handle:
        demo = subprocess.Popen(
            [sys.executable, "-m", "edgeship.cli", "demo", "--workdir", str(demo_workdir), "--agents", "4",
             "--workers", "2", "--print-every", "2"],
            cwd=ROOT, env=child_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=sigint_as_on_a_terminal)
    try:
        deadline = time.monotonic() + 180
        while "rollout #1 started" not in log.read_text(errors="replace"):
            assert demo.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        tree = process_tree(demo.pid)
        commands = " ".join(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") for pid in tree)
        assert commands.count("examples.demo.fleet_worker") == 2 and " server " in commands
        if "phones: 1 SDK agent " in log.read_text():  # 20% of 4 agents, when Node.js and the SDK are here
            assert commands.count("phone_fleet_worker.js") == 1
        if "prometheus" in log.read_text():
            assert "--storage.tsdb.path" in commands
        if target == "process group":
            os.killpg(demo.pid, signal.SIGINT)
        else:
            demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=90) == 130, log.read_text(errors="replace")[-3000:]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    left = {pid: started for pid, started in tree.items() if alive(pid, started)}
    assert left == {}, f"still running after Ctrl-C: {left}"
    assert "interrupted" in log.read_text()
