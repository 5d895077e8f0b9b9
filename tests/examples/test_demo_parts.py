"""The demo's pure parts: /metrics parsing and rates, the live block, the fleet plan (Python agents and
SDK phones), the status rows of both kinds, the summary, the rollout body."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeship.contract.latency import METRIC_BUCKETS_SECONDS
from examples.demo import live
from examples.demo.fleet import PHONE_PROFILES, PROFILES, Fleet, FleetSettings, FleetSnapshot, plan_fleet
from examples.demo.live import LiveView, MetricsHistory, latest_verdicts, parse_metrics, render
from examples.demo.rollouts import GuardMinimums, rollout_body, start_with_canaries


def metrics_text(cohort: str, inferences: int, errors: int, golden: int, labelled: int, correct: int,
                 fast: int, slow: int, model: str = "digits-cnn") -> str:
    """A /metrics page shaped like the server's: ``fast`` latencies in (0.48, 0.5] ms, ``slow`` in
    (7, 7.5] ms."""
    labels = f'model="{model}",variant="tflite-fp32",cohort="{cohort}",device_class="rpi4"'
    lines = [
        f"edgeship_inferences_total{{{labels}}} {inferences}",
        f'edgeship_inference_errors_total{{{labels},reason="runtime_error"}} {errors}',
        f'edgeship_inference_errors_total{{{labels},reason="golden_mismatch"}} {golden}',
        f"edgeship_eval_samples_total{{{labels}}} {labelled}",
        f"edgeship_eval_correct_total{{{labels}}} {correct}",
    ]
    cumulative = 0
    for bound in (*map(str, METRIC_BUCKETS_SECONDS), "+Inf"):
        cumulative = (fast if float(bound) >= 0.0005 else 0) + (slow if float(bound) >= 0.0075 else 0)
        lines.append(f'edgeship_inference_latency_seconds_bucket{{{labels},le="{bound}"}} {cumulative}')
    lines += [f"edgeship_inference_latency_seconds_count{{{labels}}} {cumulative}",
              f"edgeship_inference_latency_seconds_sum{{{labels}}} {0.0005 * fast + 0.006 * slow}"]
    return "\n".join(lines) + "\n"


def page(stable: tuple, canary: tuple) -> str:
    return metrics_text("stable", *stable) + metrics_text("canary", *canary) + metrics_text(
        "canary", 999, 999, 999, 999, 999, 999, 999, model="other-model")


def test_parse_metrics_sums_one_model_per_cohort():
    totals = parse_metrics(page((100, 1, 0, 80, 76, 90, 10), (10, 0, 3, 8, 8, 10, 0)), "digits-cnn")
    assert totals["stable"].inferences == 100 and totals["stable"].errors == 1
    assert totals["canary"].load_failures == 3 and totals["canary"].errors == 0
    buckets = totals["stable"].cumulative_buckets
    assert buckets[0] == 0 and buckets[METRIC_BUCKETS_SECONDS.index(0.0005)] == 90 and buckets[-1] == 100


def test_rates_over_the_window_are_differences_of_the_counters():
    history = MetricsHistory()
    history.add(0.0, parse_metrics(page((100, 0, 0, 100, 100, 100, 0), (0, 0, 0, 0, 0, 0, 0)), "digits-cnn"))
    assert history.window(10) is None or history.window(10)[1]["stable"].inferences_per_second == 0
    history.add(10.0, parse_metrics(page((300, 2, 0, 300, 290, 280, 20), (50, 0, 4, 50, 40, 50, 0)),
                                    "digits-cnn"))
    span, rates = history.window(10)
    assert span == 10
    stable, canary = rates["stable"], rates["canary"]
    assert stable.inferences_per_second == 20 and stable.error_rate == pytest.approx(0.01)
    assert stable.accuracy == pytest.approx(190 / 200)
    assert 0.005 < stable.p95_seconds <= 0.0075  # 10% of the window's latencies are slow
    assert canary.load_failures == 4 and canary.accuracy == pytest.approx(0.8)
    assert canary.p95_seconds <= 0.001 and canary.mean_seconds == pytest.approx(0.0005)


def test_render_shows_the_rollout_both_cohorts_the_fleet_and_the_verdicts():
    history = MetricsHistory()
    history.add(0.0, parse_metrics(page((0,) * 7, (0,) * 7), "digits-cnn"))
    history.add(5.0, parse_metrics(page((90, 0, 0, 90, 89, 90, 0), (10, 0, 0, 10, 10, 10, 0)), "digits-cnn"))
    rollout = {"id": 2, "model": "digits-cnn", "baseline": "1", "candidate": "2", "phase": "running",
               "stage": 1, "stages": 3, "canary_percent": 10.0}
    fleet = FleetSnapshot(planned=4, started=4, agents=[
        {"device_class": "rpi4", "version": "1", "cohort": "stable"},
        {"device_class": "rpi4", "version": "1", "cohort": "stable"},
        {"device_class": "rpi5", "version": "1", "cohort": "stable"},
        {"device_class": "rpi5", "version": "2", "cohort": "canary"}])
    status = {"verdicts": [
        {"window_end": "t2", "guard": "accuracy", "outcome": "pass"},
        {"window_end": "t2", "guard": "error_rate", "outcome": "inconclusive"},
        {"window_end": "t1", "guard": "error_rate", "outcome": "inconclusive"}]}
    lines = render(65, rollout, history.window(10), fleet, latest_verdicts(status), ["EdgeshipCohortSilent"])
    text = "\n".join(lines)
    assert lines[0].startswith("── 1:05 ── rollout #2 digits-cnn v1 → v2 · running · stage 1/3 · "
                               "canary share 10%")
    assert "stable        3        0    18.0       0.00%" in text
    assert "canary        1        1     2.0       0.00%" in text
    assert "running v1 ×3, v2 ×1" in text
    assert "guards: error_rate inconclusive · accuracy pass" in text
    assert "alerts firing: EdgeshipCohortSilent" in text


def test_live_view_redraws_in_place_on_a_terminal_and_prints_periodically_otherwise(monkeypatch):
    terminal = io.StringIO()
    view = LiveView(terminal, tty=True)
    view.show(["a", "b"])
    view.event("event")
    view.show(["c", "d"])
    assert terminal.getvalue() == "a\nb\n\x1b[2F\x1b[Jevent\na\nb\n\x1b[2F\x1b[Jc\nd\n"
    clock = FakeClock(1_000_000.0)  # a machine up for days; the period counts on this clock only
    monkeypatch.setattr(live, "time", SimpleNamespace(monotonic=clock))
    piped = io.StringIO()
    view = LiveView(piped, tty=False, print_every_seconds=8)
    view.show(["a"])
    clock.now += 7.5
    view.show(["b"])  # within the period: not printed
    view.event("event")
    view.show(["c"], force=True)  # printed, and the period starts again
    clock.now += 7.5
    view.show(["d"])
    clock.now += 0.5
    view.show(["e"])  # a whole period after c
    assert piped.getvalue() == "a\nevent\nc\ne\n"


class FakeClock:
    """``time.monotonic`` for :class:`LiveView`: moves only when the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_piped_live_view_prints_the_first_block_at_once_even_right_after_boot(monkeypatch):
    monkeypatch.setattr(live, "time", SimpleNamespace(monotonic=FakeClock(5.0)))  # up for 5 s
    piped = io.StringIO()
    LiveView(piped, tty=False, print_every_seconds=10).show(["a"])
    assert piped.getvalue() == "a\n"


def test_plan_spreads_every_device_class_over_every_python_worker(tmp_path: Path):
    plan = plan_fleet(FleetSettings(agents=120, workers=4, phone_share=0.0), tmp_path)
    assert [(w.kind, len(w.agents)) for w in plan] == [("python", 30)] * 4
    names = [a["name"] for w in plan for a in w.agents]
    assert len(set(names)) == 120 and len({a["state_dir"] for w in plan for a in w.agents}) == 120
    for worker in plan:
        assert {a["device_class"] for a in worker.agents} == {p.device_class for p in PROFILES}
    classes = Counter(a["device_class"] for w in plan for a in w.agents)
    assert sorted(classes.values()) == [40, 40, 40]
    assert {tuple(a["runtimes"]) for w in plan for a in w.agents} >= {("litert",), ("onnxruntime",)}


def test_plan_puts_the_phone_share_in_one_node_worker_and_the_rest_in_python_workers(tmp_path: Path):
    plan = plan_fleet(FleetSettings(agents=100, workers=4, phone_share=0.2), tmp_path)
    assert [(w.kind, len(w.agents)) for w in plan] == [("python", 20)] * 4 + [("sdk", 20)]
    phones = plan[-1].agents
    assert Counter(a["device_class"] for a in phones) == {"android": 10, "ios": 10}
    assert all(a["runtimes"] == ["onnxruntime"] and 4 * 2**30 <= a["ram_bytes"] <= 6 * 2**30 for a in phones)
    python_classes = {a["device_class"] for w in plan[:-1] for a in w.agents}
    assert python_classes.isdisjoint({p.device_class for p in PHONE_PROFILES})
    entries = [a for w in plan for a in w.agents]
    assert len({a["name"] for a in entries}) == 100 and len({a["state_dir"] for a in entries}) == 100
    # without the SDK (no Node.js) the same fleet is Python agents only
    assert [(w.kind, len(w.agents)) for w in plan_fleet(FleetSettings(agents=100, workers=4), tmp_path,
                                                        phones=False)] == [("python", 25)] * 4


@pytest.mark.parametrize(("agents", "phones"), [(20, 4), (4, 1), (2, 0), (1, 0)])
def test_a_small_fleet_gets_fewer_phones(tmp_path: Path, agents, phones):
    plan = plan_fleet(FleetSettings(agents=agents, workers=2), tmp_path)
    assert sum(len(w.agents) for w in plan if w.kind == "sdk") == phones
    assert sum(len(w.agents) for w in plan) == agents
    assert sum(1 for w in plan if w.kind == "sdk") == (1 if phones else 0)


@pytest.mark.parametrize("bad", [dict(agents=0), dict(workers=0), dict(rate_per_second=0),
                                 dict(phone_share=1.0), dict(phone_share=-0.1)])
def test_fleet_settings_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        FleetSettings(**bad)


def test_rollout_body_has_small_minimums_and_an_unanalysed_last_stage():
    body = rollout_body("digits-cnn", "2", (10.0, 50.0, 100.0), 30.0, 400, GuardMinimums())
    assert body["stages"] == [
        {"percent": 10.0, "min_duration_seconds": 30.0, "min_samples": 400},
        {"percent": 50.0, "min_duration_seconds": 30.0, "min_samples": 400},
        {"percent": 100.0, "min_duration_seconds": 0, "min_samples": 0}]
    assert {g["metric"]: g["min_samples"] for g in body["guards"]["guards"]} == {
        "error_rate": 400, "latency": 300, "accuracy": 300, "load_failures": 3}
    assert body["stratify"] is True
    from rollout_server.analysis import GuardSpec, parse_stages

    GuardSpec.from_dict(body["guards"])  # the server accepts both
    parse_stages(body["stages"])


class SplitServer:
    """A server whose rollouts split the agents as listed, one split per rollout started."""

    def __init__(self, splits: list[dict[str, int]]) -> None:
        self.splits, self.calls = splits, []

    def api(self, method: str, path: str, payload=None):
        self.calls.append((method, path, payload))
        started = sum(1 for m, p, _ in self.calls if (m, p) == ("POST", "/v1/rollouts"))
        if (method, path) == ("POST", "/v1/rollouts"):
            return {"id": started}
        if method == "GET":
            return {"devices": self.splits[started - 1]}
        return {}


def test_a_canary_split_too_small_for_the_guards_is_started_again_with_the_reason():
    server = SplitServer([{"canary": 2, "stable": 98}, {"canary": 11, "stable": 89}])
    events = []
    monitor = SimpleNamespace(server=server, tick=lambda: None, event=events.append)
    announced = []
    status = start_with_canaries(monitor, {"model": "m"}, need=3, agents=100, started=announced.append)
    assert status == {"id": 2} and announced == [{"id": 1}, {"id": 2}]
    aborts = [(p, body) for m, p, body in server.calls if p.endswith("/abort")]
    assert len(aborts) == 1 and aborts[0][0] == "/v1/rollouts/1/abort"
    assert "only 2 of 100 agents fell in the canary" in aborts[0][1]["reason"]
    assert events and "rollout #1 aborted" in events[0]


class FakeAgent:
    def __init__(self, version: str, cohort: str) -> None:
        self.version, self.cohort = version, cohort

    def status(self) -> dict:
        return {"device_id": "d-1", "version": self.version, "variant": "tflite-fp32", "cohort": self.cohort,
                "rollout_id": 2}


def test_status_rows_of_both_kinds_add_up_per_kind_class_cohort_and_version(tmp_path: Path):
    from examples.demo.fleet_worker import Worker

    status_file = tmp_path / "worker-0.status.json"
    worker = Worker({"status_file": str(status_file), "agents": [{}, {}]})
    worker.agents = [
        ({"name": "agent-000", "device_class": "rpi4"}, FakeAgent("1", "stable"), SimpleNamespace(sent=3)),
        ({"name": "agent-001", "device_class": "rpi5"}, FakeAgent("2", "canary"), SimpleNamespace(sent=4))]
    worker.write_status()
    python = json.loads(status_file.read_text())
    assert python["kind"] == "python" and {row["kind"] for row in python["agents"]} == {"python"}
    # the Node worker's rows (sdk/js/demo/phone_fleet_worker.ts) have the same fields, kind "sdk"
    phones = [
        {"name": "phone-000", "device_class": "android", "kind": "sdk", "device_id": "p-0", "version": "2",
         "variant": "onnx-fp32", "cohort": "canary", "rollout_id": 2, "sent": 5},
        {"name": "phone-001", "device_class": "ios", "kind": "sdk", "device_id": "p-1", "version": "1",
         "variant": "onnx-fp32", "cohort": "stable", "rollout_id": 2, "sent": 5}]
    (tmp_path / "worker-1.status.json").write_text(json.dumps(
        {"pid": 1, "time": 0, "planned": 2, "kind": "sdk", "agents": phones}))
    fleet = Fleet(FleetSettings(agents=4, workers=1), tmp_path, "http://127.0.0.1:1", "t", __file__, __file__,
                  "m")
    fleet.status_files = [status_file, tmp_path / "worker-1.status.json"]
    snapshot = fleet.snapshot()
    assert snapshot.started == 4 and snapshot.running("2") == 2
    assert snapshot.arms() == {("python", "rpi4", "stable", "1"): 1, ("python", "rpi5", "canary", "2"): 1,
                               ("sdk", "android", "canary", "2"): 1, ("sdk", "ios", "stable", "1"): 1}
    assert snapshot.variants_by_class()[("sdk", "android")] == {"onnx-fp32": 1}
    assert ((2, "sdk", "ios", "stable", "1") in snapshot.rollout_arms()
            and {arm[0] for arm in snapshot.rollout_arms()} == {2})
    text = "\n".join(render(5, None, None, snapshot, [], None))
    assert "by kind: python canary v2 ×1, stable v1 ×1 · sdk canary v2 ×1, stable v1 ×1" in text


def test_summary_shows_both_kinds_at_the_rollback_and_at_the_promotion():
    from examples.demo.rollouts import RolloutOutcome
    from examples.demo.run import DemoConfig, LoopResult
    from examples.demo.summary import summary_lines

    at_rollback = Counter({("python", "rpi4", "stable", "1"): 8, ("sdk", "android", "stable", "1"): 2})
    at_promotion = Counter({("python", "rpi4", "canary", "2"): 4, ("python", "rpi4", "stable", "1"): 4,
                            ("sdk", "android", "canary", "2"): 1, ("sdk", "android", "stable", "1"): 1})
    bad = RolloutOutcome(1, "3", "rolled_back", "load_failures failed", 4.0, [(10.0, 4.0)],
                         [("load_failures", "load_failures failed pooled: 100% (4/4)")], {}, at_rollback)
    good = RolloutOutcome(2, "2", "promoted", "", 62.0, [(10.0, 31.0), (50.0, 31.0)], [], {"verdicts": []},
                          at_promotion)
    result = LoopResult(
        fleet_ready_seconds=9, bad=bad, good=good, loop_seconds=80, agents_by_kind={"python": 8, "sdk": 2},
        workers_by_kind={"python": 2, "sdk": 1},
        variants_by_class={("python", "rpi4"): {"tflite-fp32": 8}, ("sdk", "android"): {"onnx-fp32": 2}},
        refused_devices=4, refused_by_class={"android": (1, 1), "rpi4": (3, 3)},
        at_rollback=bad.arms, at_promotion=good.arms,
        at_end=Counter({("python", "rpi4", "stable", "2"): 8, ("sdk", "android", "stable", "2"): 2}),
        final_versions={"2": 10})
    config = DemoConfig(fleet=FleetSettings(agents=10, workers=2))
    text = "\n".join(summary_lines(result, config, 10.0, None, "/run"))
    assert "8 Python agents in 2 worker processes, 2 SDK phones (android, ios) in 1 Node process" in text
    assert "sdk     android ×2 → onnx-fp32" in text
    assert "refused on-device, per class (canary devices): android 1/1 · rpi4 3/3" in text
    assert re.search(r"at the rollback +python +rpi4: stable v1 ×8\n +sdk +android: stable v1 ×2", text)
    assert re.search(r"at the promotion +python +rpi4: canary v2 ×4, stable v1 ×4\n"
                     r" +sdk +android: canary v2 ×1, stable v1 ×1", text)
    assert "now      v2: 10 agents (python 8, sdk 2)" in text


def test_node_programs_need_node_and_the_sdk_packages(monkeypatch, tmp_path: Path):
    from examples.demo import typescript

    monkeypatch.setattr(typescript.shutil, "which", lambda name: None)
    with pytest.raises(typescript.Unavailable, match="node is not installed"):
        typescript.node_program(tmp_path / "tsconfig.json", tmp_path / "out.js", [])
    monkeypatch.setattr(typescript.shutil, "which", lambda name: "/usr/bin/node")
    monkeypatch.setattr(typescript, "SDK", tmp_path)
    with pytest.raises(typescript.Unavailable, match="npm ci"):
        typescript.node_program(tmp_path / "tsconfig.json", tmp_path / "out.js", [])


def test_an_output_older_than_a_source_is_stale(tmp_path: Path):
    import os

    from examples.demo.typescript import stale

    source, output = tmp_path / "a.ts", tmp_path / "a.js"
    source.write_text("")
    assert stale(output, [source])
    output.write_text("")
    os.utime(source, (1000, 1000))
    os.utime(output, (2000, 2000))
    assert not stale(output, [source])
    os.utime(source, (3000, 3000))
    assert stale(output, [source])
