"""``edgeship simulate`` against a real server over HTTP (werkzeug in a thread, real controller):
registration, ETag polling and stored reports; loopback only; a bad canary rolled back and a
good one promoted while the simulated fleet runs."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from edgeship.cli import main
from edgeship.contract.sketch import LatencySketch
from rollout_server.app import create_app
from rollout_server.db import session_scope
from rollout_server.models import Device, Release, Report
from rollout_server.simulator import (
    NotLoopbackError,
    Profile,
    ProfileTable,
    SettingsError,
    Simulation,
    SimulationConfig,
    SimulatorError,
    loopback_target,
    parse_profile,
)
from rollout_server.simulator.fleet import parse_classes, parse_runtimes, plan_fleet
from tests.rollout_server.conftest import auth, seed_release, variant_entry

#: the default guards, with the load-failure guard's device minimum sized for ~30 canary devices.
GUARDS = {"guards": [{"metric": "error_rate"}, {"metric": "latency"}, {"metric": "accuracy"},
                     {"metric": "load_failures", "min_samples": 5}]}
#: two analysed stages with 2,000 canary inferences each, then 100% (= promotion); the 50% stage
#: lasts long enough for every device to poll and report once under the test's load.
STAGES = [{"percent": 10, "min_duration_seconds": 3, "min_samples": 2000},
          {"percent": 50, "min_duration_seconds": 6, "min_samples": 2000},
          {"percent": 100, "min_duration_seconds": 0, "min_samples": 0}]
CLASSES = {"rpi4": 0.5, "android": 0.5}


@pytest.fixture
def app(tmp_path: Path):
    """The server with its real controller, analysing every second."""
    app = create_app({"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": True,
                      "CONTROLLER_INTERVAL_SECONDS": 0.5, "ANALYSIS_WINDOW_SECONDS": 1})
    yield app
    app.extensions["edgeship.controller_stop"].set()


def seed(app, *versions: str) -> None:
    """Releases with an ONNX variant (rpi4 picks it: faster) and a TFLite one (android's only)."""
    for i, version in enumerate(versions):
        seed_release(app, version, [variant_entry("onnx-fp32", "onnxruntime", 0.5, f"{2 * i:x}" * 64),
                                    variant_entry("tflite-int8", "litert", 1.0, f"{2 * i + 1:x}" * 64)],
                     stable=i == 0)


def config(server: str, enroll: str, **overrides) -> SimulationConfig:
    settings = dict(server=server, enrollment_token=enroll, model="digits-cnn", devices=300,
                    duration_seconds=45, window_seconds=1.0, time_scale=10.0, inferences_per_second=4.0,
                    classes=CLASSES, workers=4)
    return SimulationConfig(**{**settings, **overrides})


def scalar(app, statement):
    with session_scope(app) as session:
        return session.scalar(statement)


def scalars(app, statement) -> list:
    with session_scope(app) as session:
        return list(session.scalars(statement))


def rows(app, statement) -> list:
    with session_scope(app) as session:
        return list(session.execute(statement))


# -- load: registration, ETag polling, stored reports ------------------------------------------

def test_fleet_registers_polls_with_etags_and_its_reports_are_stored(app, live_server, tokens):
    seed(app, "1")
    lines: list[str] = []
    summary = Simulation(config(live_server, tokens["enroll"], duration_seconds=4.5), log=lines.append).run()

    assert summary["stopped_because"] == "duration"
    assert scalar(app, select(func.count()).select_from(Device)) == 300 == summary["devices"]["registered"]
    polls = summary["requests"]["by_kind"]["assignment"]["statuses"]
    assert polls.get("200", 0) >= 300, polls  # every device fetched its document once ...
    assert polls.get("304", 0) > 0, polls  # ... then polled with If-None-Match
    assert summary["requests"]["failed"] == 0, summary["requests"]
    stored = scalar(app, select(func.count()).select_from(Report))
    assert stored == summary["reports"]["accepted"] > 0
    sent = sum(t["inferences"] for t in summary["traffic"])
    assert scalar(app, select(func.sum(Report.inferences))) == sent
    # each device reports the release and variant its assignment named
    assert set(rows(app, select(Report.device_class, Report.variant_id, Release.version, Report.cohort)
                    .join(Release, Report.release_id == Release.id).distinct())) == {
        ("rpi4", "onnx-fp32", "1", "stable"), ("android", "tflite-int8", "1", "stable")}
    assert len(lines) >= 4 and all("req/s" in line and "p99" in line for line in lines), lines
    assert summary["requests"]["per_second"] > 0 and summary["requests"]["p99_ms"] > 0


def test_reports_follow_the_profile_of_their_release(app, live_server, tokens):
    seed(app, "1")
    profiles = ProfileTable({"1": Profile(error_rate=0.2, accuracy=0.5, latency_median_seconds=0.3)})
    summary = Simulation(config(live_server, tokens["enroll"], devices=40, duration_seconds=3.5,
                                profiles=profiles)).run()
    errors = Report.err_runtime_error + Report.err_timeout + Report.err_other
    inferences, failed, labelled, correct = rows(app, select(
        func.sum(Report.inferences), func.sum(errors), func.sum(Report.labelled),
        func.sum(Report.correct)))[0]
    assert inferences > 2000, summary["reports"]
    assert 0.17 < failed / inferences < 0.23
    assert 0.42 < correct / labelled < 0.58
    # schema-2 reports: the merged sketch's median is the profile's 0.3 s (within sampling noise)
    merged = LatencySketch()
    for text in scalars(app, select(Report.latency_sketch)):
        merged.merge(LatencySketch.from_wire(json.loads(text)))
    assert merged.total == inferences - failed
    assert merged.quantile(0.5) == pytest.approx(0.3, rel=0.06)
    assert merged.quantile(0.95) == pytest.approx(0.3 * math.exp(0.5 * 1.645), rel=0.1)


#: the fleet of the Ctrl-C test, in its own interpreter: SIGINT there reaches only the fleet, not
#: the test runner (whose native libraries' threads, from earlier tests, have no business with it)
_INTERRUPTED_FLEET = """
import json, signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell may ignore SIGINT
from rollout_server.simulator import Simulation
from tests.rollout_server.test_simulator import config
summary = Simulation(config(sys.argv[1], sys.argv[2], devices=50, duration_seconds=60)).run()
left = [t.name for t in threading.enumerate() if t.name.startswith("edgeship-simulate")]
print(json.dumps({"summary": summary, "threads": left}, default=str))
"""


def test_ctrl_c_stops_the_fleet_cleanly(app, live_server, tokens):
    seed(app, "1")
    fleet = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_FLEET, live_server, tokens["enroll"]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        for _ in range(1200):  # waits on the first stored report, not on a guess of time
            if fleet.poll() is not None or scalar(app, select(func.count(Report.id))):
                break
            threading.Event().wait(0.05)
        fleet.send_signal(signal.SIGINT)  # Ctrl-C as at a terminal
        out, err = fleet.communicate(timeout=60)
    finally:
        fleet.kill()
    assert fleet.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    summary = result["summary"]
    assert summary["stopped_because"] == "interrupted"
    assert summary["elapsed_seconds"] < 60  # stopped by the signal, long before its duration
    assert summary["reports"]["accepted"] > 0
    assert result["threads"] == []


# -- loopback only ------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://10.0.0.1:8080", "http://example.com:8080", "http://[2001:db8::1]:80",
                                 "http://0.0.0.0:8080", "http://127.0.0.1.nip.io:8080",
                                 "https://127.0.0.1:8443", "ftp://127.0.0.1/"])
def test_servers_off_loopback_are_refused_without_any_network_call(url, monkeypatch):
    calls = []

    def trap(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"network call {args}")

    monkeypatch.setattr(socket, "getaddrinfo", trap)
    monkeypatch.setattr(socket, "create_connection", trap)
    monkeypatch.setattr(socket.socket, "connect", trap)
    with pytest.raises(NotLoopbackError, match=r"loopback|http://"):
        Simulation(SimulationConfig(server=url, enrollment_token="t", model="digits-cnn"))
    assert calls == []


def test_the_cli_refuses_a_non_loopback_server(capsys):
    code = main(["simulate", "--server", "http://10.0.0.1:8080", "--enroll-token", "t", "--model", "m"])
    assert code == 2
    assert "10.0.0.1 is not a loopback address" in capsys.readouterr().err


@pytest.mark.parametrize(("url", "addresses", "port", "prefix"), [
    ("http://127.0.0.2:9/", {"127.0.0.2"}, 9, ""),
    ("http://[::1]:8080", {"::1"}, 8080, ""),
    ("http://localhost/edgeship/", {"127.0.0.1", "::1"}, 80, "/edgeship"),
])
def test_loopback_servers_are_accepted_and_pinned(url, addresses, port, prefix):
    target = loopback_target(url)
    assert (target.address, target.port, target.base_path) in {(a, port, prefix) for a in addresses}


# -- specs --------------------------------------------------------------------------------------

def test_specs_parse_and_name_their_errors():
    key, profile = parse_profile("2/tflite-int8:error=0.05,p50_ms=12,sigma=0.3,accuracy=0.97")
    assert key == "2/tflite-int8"
    assert (profile.error_rate, profile.latency_median_seconds, profile.accuracy) == (0.05, 0.012, 0.97)
    table = ProfileTable({"2": Profile(error_rate=0.1), key: profile})
    assert table.lookup("2", "tflite-int8")[1] is profile
    assert table.lookup("2", "onnx-fp32")[1].error_rate == 0.1
    assert table.lookup("3", "onnx-fp32") == ("default", table.default)
    for bad, message in [("2:error=2", "error_rate must be in"), ("2:speed=3", "speed"),
                         ("error=1", "VERSION"), ("2:p50_ms=fast", "p50_ms must be a number")]:
        with pytest.raises(SettingsError, match=message):
            parse_profile(bad)
    assert parse_classes("rpi4:1,android:3") == {"rpi4": 0.25, "android": 0.75}
    with pytest.raises(SettingsError, match="positive"):
        parse_classes("rpi4:0")
    assert parse_runtimes(["android=litert:2.3.0", "onnxruntime:1.20.1"]) == {
        "android": {"litert": "2.3.0"}, "*": {"onnxruntime": "1.20.1"}}
    fleet = plan_fleet(1000, parse_classes("rpi4:0.5,rpi5:0.3,android:0.2"),
                       parse_runtimes(["android=litert:2.3.0"]))
    assert sum(d.device_class == "rpi5" for d in fleet) == 300
    assert [d.device_class for d in plan_fleet(3, {"rpi4": 1, "ios": 2})].count("ios") == 2  # relative shares
    assert {tuple(d.runtimes) for d in fleet if d.device_class == "android"} == {("litert",)}


# -- the guards under a running fleet -----------------------------------------------------------

def start_rollout(client, admin: str, version: str) -> int:
    response = client.post("/v1/rollouts", json={"model": "digits-cnn", "candidate_version": version,
                                                  "stages": STAGES, "guards": GUARDS}, headers=auth(admin))
    assert response.status_code == 201, response.json
    return response.json["id"]


def test_watching_a_missing_or_ended_rollout_fails_before_any_device_registers(app, live_server, tokens,
                                                                              client):
    seed(app, "1", "2")
    admin, enroll = tokens["admin"], tokens["enroll"]
    with pytest.raises(SimulatorError, match="HTTP 404"):
        Simulation(config(live_server, enroll, watch_rollout=99, operator_token=admin)).run()
    rollout_id = start_rollout(client, admin, "2")
    assert client.post(f"/v1/rollouts/{rollout_id}/abort", headers=auth(admin)).status_code == 200
    with pytest.raises(SimulatorError, match="already aborted"):
        Simulation(config(live_server, enroll, watch_rollout=rollout_id, operator_token=admin)).run()
    assert scalar(app, select(func.count()).select_from(Device)) == 0


def test_bad_canary_is_rolled_back_by_the_controller_while_the_fleet_runs(app, live_server, tokens, client):
    seed(app, "1", "2")
    rollout_id = start_rollout(client, tokens["admin"], "2")
    profiles = ProfileTable({"1": Profile(error_rate=0.01, load_failure_rate=0.0),
                             "2": Profile(error_rate=0.05, load_failure_rate=0.0)})  # 5x stable
    summary = Simulation(config(live_server, tokens["enroll"], profiles=profiles, watch_rollout=rollout_id,
                                operator_token=tokens["admin"])).run()

    status = client.get(f"/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"])).json
    assert status["phase"] == "rolled_back", [v["reason"] for v in status["verdicts"][:4]]
    assert summary["stopped_because"] == "rollout rolled_back", summary["rollout"]
    assert summary["elapsed_seconds"] < 45
    failing = {v["guard"] for v in status["verdicts"] if v["outcome"] == "fail"}
    assert failing == {"error_rate"}, status["reason"]
    traffic = {(t["cohort"], t["version"]): t for t in summary["traffic"]}
    assert 0.03 < traffic["canary", "2"]["error_rate"] < 0.08  # 5%, on a few hundred inferences
    assert 0.005 < traffic["stable", "1"]["error_rate"] < 0.015
    cohorts = set(rows(app, select(Report.cohort, Release.version, Report.rollout_id)
                       .join(Release, Report.release_id == Release.id).distinct()))
    # a device that polled between the rollback and the end of the run is back on stable outside
    # any rollout, as it should be: its window may land too
    assert cohorts - {("stable", "1", None)} == {("stable", "1", rollout_id), ("canary", "2", rollout_id)}


def test_good_canary_is_promoted_through_its_stages_while_the_fleet_runs(app, live_server, tokens, client,
                                                                         tmp_path):
    seed(app, "1", "2")
    rollout_id = start_rollout(client, tokens["admin"], "2")
    out = tmp_path / "summary.json"
    code = main(["simulate", "--server", live_server, "--enroll-token", tokens["enroll"],
                 "--model", "digits-cnn", "--devices", "300", "--duration", "45",
                 "--window-seconds", "1", "--time-scale", "10",
                 "--inference-rate", "4", "--workers", "4", "--classes", "rpi4:0.5,android:0.5",
                 "--profile", "1:error=0.01,p50_ms=10,accuracy=0.95,load_fail=0",
                 "--profile", "2:error=0.002,p50_ms=8,accuracy=0.97,load_fail=0",
                 "--watch-rollout", str(rollout_id), "--token", tokens["admin"], "--json-out", str(out)])

    assert code == 0
    summary = json.loads(out.read_text())
    status = client.get(f"/v1/rollouts/{rollout_id}", headers=auth(tokens["admin"])).json
    assert status["phase"] == "promoted", [v["reason"] for v in status["verdicts"][:4]]
    assert summary["stopped_because"] == "rollout promoted", summary["rollout"]
    decisions = [v["decision"] for v in reversed(status["verdicts"])]
    assert "advance" in decisions and decisions[-1] == "promote"
    model = client.get("/v1/models/digits-cnn", headers=auth(tokens["admin"])).json
    assert model["stable_version"] == "2"
    # the devices followed the ramp: about 30 canary devices at 10%, about 150 at 50%
    canary_devices = scalar(app, select(func.count(func.distinct(Report.device_id)))
                            .where(Report.cohort == "canary"))
    assert canary_devices > 100, canary_devices
