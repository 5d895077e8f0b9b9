"""The demo's pure parts: /metrics parsing and rates, the live block, the fleet plan, the rollout body."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeship.contract.latency import METRIC_BUCKETS_SECONDS
from examples.demo import live
from examples.demo.fleet import PROFILES, FleetSettings, FleetSnapshot, plan_fleet
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


def test_plan_spreads_every_device_class_over_every_worker(tmp_path: Path):
    plan = plan_fleet(FleetSettings(agents=100, workers=4), tmp_path)
    assert [len(agents) for agents in plan] == [25, 25, 25, 25]
    names = [a["name"] for agents in plan for a in agents]
    assert len(set(names)) == 100 and len({a["state_dir"] for agents in plan for a in agents}) == 100
    for agents in plan:
        assert {a["device_class"] for a in agents} == {p.device_class for p in PROFILES}
    classes = Counter(a["device_class"] for agents in plan for a in agents)
    assert sorted(classes.values()) == [25, 25, 25, 25]
    assert {tuple(a["runtimes"]) for agents in plan for a in agents} >= {("litert",), ("onnxruntime",)}


@pytest.mark.parametrize("bad", [dict(agents=0), dict(workers=0), dict(rate_per_second=0)])
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
