"""Window aggregates: what a device counts per model key and the reports it makes of them."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.window import Window, WindowKey, WindowSet, iso_utc, peak_rss_bytes
from edgeship.contract.reports import ERROR_REASONS
from edgeship.contract.sketch import MIN_SECONDS, LatencySketch, bucket_of
from tests.skip_policy import dev_venv_only

KEY = WindowKey("digits-cnn", "1", "tflite-int8", rollout_id=None, cohort="stable")
CANARY = WindowKey("digits-cnn", "2", "tflite-int8", rollout_id=7, cohort="canary")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def parse(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def test_inferences_fill_the_sketch_and_the_latency_sum():
    window = Window(opened_at=0.0)
    for latency in (0.0, 0.0005, 0.001, 0.003, 0.003, 3.0):
        window.record_inference(latency)
    assert window.inferences == 6
    assert window.latency.counts == {bucket_of(MIN_SECONDS): 1, bucket_of(0.0005): 1, bucket_of(0.001): 1,
                                     bucket_of(0.003): 2, bucket_of(3.0): 1}
    assert window.latency_sum_seconds == pytest.approx(3.0075)


def test_numpy_latencies_become_plain_floats_for_json():
    window = Window(opened_at=0.0)
    window.record_inference(np.float32(0.002))
    assert type(window.latency_sum_seconds) is float


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf, "fast", None])
def test_impossible_latencies_are_refused(bad):
    window = Window(opened_at=0.0)
    with pytest.raises(ValueError, match="latency_seconds"):
        window.record_inference(bad)
    assert window.is_empty


@pytest.mark.parametrize("reason", ["runtime_error", "timeout", "other"])
def test_a_per_inference_error_counts_an_inference_without_a_latency(reason):
    window = Window(opened_at=0.0)
    window.record_error(reason)
    assert window.inferences == 1 and window.errors[reason] == 1
    assert window.latency.total == 0 and not window.is_empty


@pytest.mark.parametrize("reason", ["load_failed", "golden_mismatch"])
def test_an_install_error_counts_no_inference(reason):
    window = Window(opened_at=0.0)
    window.record_error(reason)
    assert window.inferences == 0 and window.errors[reason] == 1
    assert not window.is_empty  # still reported: the server must see failed installs


def test_an_unknown_error_reason_is_refused_with_the_known_ones():
    window = Window(opened_at=0.0)
    with pytest.raises(ValueError, match=r"meltdown.*load_failed"):
        window.record_error("meltdown")
    assert window.is_empty and set(window.errors) == set(ERROR_REASONS)


def test_labelled_and_shadow_samples_count_agreement_and_distance():
    window = Window(opened_at=0.0)
    for correct in (True, True, False):
        window.record_labelled(correct)
    window.record_shadow(agree=True, distance=0.1)
    window.record_shadow(agree=False, distance=0.7)
    assert (window.labelled, window.correct) == (3, 2)
    assert (window.shadow_samples, window.shadow_agree) == (2, 1)
    assert window.shadow_distance_sum == pytest.approx(0.8) and window.shadow_distance_max == 0.7
    assert window.shadow_distance_samples == 2
    for bad in (-1.0, math.nan, -math.inf, "far"):
        with pytest.raises(ValueError, match="distance"):
            window.record_shadow(agree=True, distance=bad)
    assert window.shadow_samples == 2


@pytest.mark.parametrize("unmeasured", [None, math.inf])
def test_a_failed_candidate_counts_a_disagreement_without_a_distance(unmeasured):
    window = Window(opened_at=0.0)
    window.record_shadow(agree=True, distance=np.float32(0.5))
    window.record_shadow(agree=False, distance=unmeasured)
    assert (window.shadow_samples, window.shadow_agree, window.shadow_distance_samples) == (2, 1, 1)
    assert window.shadow_distance_sum == 0.5 and window.shadow_distance_max == 0.5
    assert type(window.shadow_distance_sum) is float


def test_a_key_needs_a_known_cohort_and_a_sane_rollout_id():
    with pytest.raises(ValueError, match="cohort"):
        WindowKey("m", "1", "v", rollout_id=None, cohort="beta")
    with pytest.raises(ValueError, match="rollout_id"):
        WindowKey("m", "1", "v", rollout_id=-1, cohort="canary")
    assert WindowKey("m", "1", "v", 3, "canary") == WindowKey("m", "1", "v", 3, "canary")


def test_close_reports_each_non_empty_window_in_the_wire_format():
    clock = FakeClock()
    windows = WindowSet(clock=clock, rss_reader=lambda: 123_456_789)
    windows.record_inference(KEY, 0.004)
    clock.now += 10
    windows.record_inference(CANARY, 0.02)
    windows.record_error(CANARY, "timeout")
    windows.record_error(CANARY, "golden_mismatch")
    windows.record_labelled(CANARY, correct=True)
    windows.record_shadow(CANARY, agree=False, distance=0.5)
    clock.now += 290
    reports = {r["version"]: r for r in windows.close()}

    assert set(reports) == {"1", "2"}
    canary = reports["2"]
    assert canary == {
        "id": canary["id"], "model": "digits-cnn", "version": "2", "variant": "tflite-int8",
        "rollout_id": 7, "cohort": "canary",
        "window_start": canary["window_start"], "window_end": canary["window_end"],
        "inferences": 2, "errors": {"load_failed": 0, "runtime_error": 0, "golden_mismatch": 1,
                                    "timeout": 1, "other": 0},
        "schema": 2, "latency": {"schema": 5, "buckets": [[bucket_of(0.02), 1]]},
        "latency_sum_seconds": 0.02, "labelled": 1, "correct": 1,
        "shadow_samples": 1, "shadow_agree": 0, "peak_rss_bytes": 123_456_789, "dropped_windows": 0,
    }
    assert len(canary["id"]) == 32 and canary["id"] != reports["1"]["id"]
    # each window starts when its key was first recorded; all end at the close
    assert parse(reports["1"]["window_start"]) == 1_700_000_000.0
    assert parse(canary["window_start"]) == 1_700_000_010.0
    assert parse(canary["window_end"]) == parse(reports["1"]["window_end"]) == 1_700_000_300.0
    assert canary["window_end"].endswith("+00:00")
    assert reports["1"]["rollout_id"] is None and reports["1"]["cohort"] == "stable"


def test_windows_after_a_close_start_empty_and_back_to_back():
    clock = FakeClock()
    windows = WindowSet(clock=clock, rss_reader=lambda: 0)
    windows.record_inference(KEY, 0.004)
    (first,) = windows.close(now=clock.now + 300)
    assert windows.close(now=clock.now + 350) == []  # nothing new: no report
    clock.now += 400
    windows.record_inference(KEY, 0.004)
    (second,) = windows.close(now=clock.now + 100)
    assert second["inferences"] == 1 and second["id"] != first["id"]
    assert parse(second["window_start"]) == clock.now  # the idle key was forgotten, reopened now
    # the busy key's next window opened at the first close
    windows2 = WindowSet(clock=clock, rss_reader=lambda: 0)
    windows2.record_inference(KEY, 0.004)
    windows2.close(now=clock.now + 300)
    windows2.record_inference(KEY, 0.004)
    (next_window,) = windows2.close(now=clock.now + 600)
    assert parse(next_window["window_start"]) == clock.now + 300


def test_a_clock_stepping_back_never_ends_a_window_before_it_starts():
    clock = FakeClock()
    windows = WindowSet(clock=clock, rss_reader=lambda: 0)
    windows.record_inference(KEY, 0.004)
    (report,) = windows.close(now=clock.now - 3600)  # NTP corrected the clock backwards
    assert report["window_end"] == report["window_start"]


def test_install_failures_alone_make_a_report_with_no_inferences():
    windows = WindowSet(clock=FakeClock(), rss_reader=lambda: 0)
    windows.record_error(CANARY, "load_failed")
    (report,) = windows.close()
    assert report["inferences"] == 0 and report["errors"]["load_failed"] == 1


def test_a_refused_record_opens_no_window():
    windows = WindowSet(clock=FakeClock(), rss_reader=lambda: 0)
    with pytest.raises(ValueError):
        windows.record_error(KEY, "meltdown")
    with pytest.raises(ValueError):
        windows.record_inference(KEY, -1.0)
    assert windows.snapshot() == {}


def test_snapshot_is_a_copy():
    windows = WindowSet(clock=FakeClock(), rss_reader=lambda: 0)
    windows.record_shadow(KEY, agree=True, distance=0.25)
    snapshot = windows.snapshot()
    windows.record_shadow(KEY, agree=True, distance=0.5)
    assert snapshot[KEY].shadow_samples == 1 and snapshot[KEY].shadow_distance_max == 0.25
    assert windows.snapshot()[KEY].shadow_distance_max == 0.5


def test_concurrent_recording_and_closing_lose_no_count():
    windows = WindowSet(rss_reader=lambda: 0)
    per_thread, threads = 2000, 4
    closed: list[dict] = []
    done = threading.Event()

    def record() -> None:
        for i in range(per_thread):
            windows.record_inference(KEY, 0.001 * (i % 7))

    def close_often() -> None:
        while not done.is_set():
            closed.extend(windows.close())

    closer = threading.Thread(target=close_often)
    closer.start()
    workers = [threading.Thread(target=record) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    closer.join()
    closed.extend(windows.close())
    assert sum(r["inferences"] for r in closed) == per_thread * threads
    assert sum(LatencySketch.from_wire(r["latency"]).total for r in closed) == per_thread * threads


def test_peak_rss_is_this_process_and_plausible():
    """In a fresh interpreter: the test runner's own peak (whatever ran before) may already lie
    above what 64 MiB more brings this process to."""
    code = ("import numpy as np; from edge_agent.window import peak_rss_bytes; before = peak_rss_bytes(); "
            "ballast = np.ones(64 * 2**20 // 8); print(before, peak_rss_bytes())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert 10 * 2**20 < before < 8 * 2**30
    assert after >= before + 32 * 2**20
    assert 10 * 2**20 < peak_rss_bytes() < 64 * 2**30  # and this process's, read the same way


def test_peak_rss_falls_back_to_getrusage_without_proc(monkeypatch):
    import builtins

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert peak_rss_bytes() > 10 * 2**20  # ru_maxrss, scaled to bytes


def test_iso_utc_round_trips():
    assert parse(iso_utc(1_700_000_000.25)) == 1_700_000_000.25


def test_reports_pass_the_servers_validation(tmp_path):
    """The contract: the server accepts what close() makes (skipped on a device-only install)."""
    dev_venv_only("flask")
    from rollout_server.app import create_app
    from rollout_server.auth import FIRST_START_FILE
    from tests.rollout_server.conftest import auth, register, seed_release, variant_entry

    app = create_app({"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": False})
    seed_release(app, "1", [variant_entry("tflite-int8", "litert", 0.4, "b" * 64)], stable=True)
    client = app.test_client()
    tokens = dict(line.split("=", 1) for line in (tmp_path / "server" / FIRST_START_FILE).read_text().split())
    _, credential = register(client, tokens["EDGESHIP_ENROLL_TOKEN"])

    windows = WindowSet(rss_reader=peak_rss_bytes)
    for latency in (0.0004, 0.004, 0.04, 4.0):
        windows.record_inference(KEY, latency)
    windows.record_error(KEY, "runtime_error")
    windows.record_error(KEY, "golden_mismatch")
    windows.record_labelled(KEY, correct=False)
    windows.record_shadow(KEY, agree=True, distance=0.01)
    reports = windows.close()
    response = client.post("/v1/reports", json={"reports": reports}, headers=auth(credential))
    assert response.status_code == 200, response.json
    assert response.json["accepted"] == [reports[0]["id"]]
