"""The operator CLI over real HTTP: models set-stable and the rollout commands."""

from __future__ import annotations

from tests.rollout_server.conftest import edgeship, seed_release, variant_entry


def test_rollout_commands_drive_a_rollout_over_http(app, live_server, tokens):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)])
    seed_release(app, "2", [variant_entry("onnx-int8", "onnxruntime", 0.5, "b" * 64)])
    admin = tokens["admin"]
    no_stable = edgeship("rollout", "start", "digits-cnn", "2", "--server", live_server, token=admin)
    assert no_stable.returncode != 0 and "no stable release" in no_stable.stderr
    stable = edgeship("models", "set-stable", "digits-cnn", "1", "--server", live_server, token=admin)
    assert stable.returncode == 0 and "stable is now 1" in stable.stdout, stable.stderr
    started = edgeship("rollout", "start", "digits-cnn", "2", "--stages", "5,25,100", "--min-duration", "60",
                       "--server", live_server, token=admin)
    assert started.returncode == 0, started.stderr
    assert "phase running, stage 1/3, canary 5%" in started.stdout
    rollout_id = started.stdout.split("#", 1)[1].split(":", 1)[0]
    paused = edgeship("rollout", "pause", rollout_id, "--reason", "night", "--server", live_server,
                      token=admin)
    assert paused.returncode == 0 and "phase paused" in paused.stdout and "night" in paused.stdout
    listed = edgeship("rollout", "list", "--server", live_server, token=admin)
    assert f"#{rollout_id}" in listed.stdout and "paused" in listed.stdout
    aborted = edgeship("rollout", "abort", rollout_id, "--server", live_server, token=admin)
    assert aborted.returncode == 0 and "phase aborted" in aborted.stdout
    again = edgeship("rollout", "resume", rollout_id, "--server", live_server, token=admin)
    assert again.returncode != 0 and "cannot resume a rollout that is aborted" in again.stderr
    status = edgeship("rollout", "status", rollout_id, "--server", live_server, token=admin)
    assert status.returncode == 0 and "phase aborted" in status.stdout
    bad = edgeship("rollout", "start", "digits-cnn", "2", "--stages", "ten", "--server", live_server,
                   token=admin)
    assert bad.returncode != 0 and "--stages" in bad.stderr
