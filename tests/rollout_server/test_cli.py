"""The operator CLI over real HTTP: models set-stable, the rollout commands, tokens and devices, and
tokens read from files or the environment."""

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


# -- tokens and devices (issue 19) ----------------------------------------------------------------


def test_operator_commands_read_the_token_from_a_file_or_the_environment(live_server, tokens, tmp_path):
    secret = tmp_path / "admin.token"
    secret.write_text(f"\n{tokens['admin']}\n")
    secret.chmod(0o600)
    listed = edgeship("tokens", "list", "--token-file", secret, "--server", live_server)
    assert listed.returncode == 0, listed.stderr
    assert "admin" in listed.stdout and "enrollment" in listed.stdout and "warning" not in listed.stderr
    assert tokens["admin"] not in listed.stdout + listed.stderr
    secret.chmod(0o644)
    loose = edgeship("models", "list", "--token-file", secret, "--server", live_server)
    assert loose.returncode == 0 and "can be read by other users" in loose.stderr
    assert "chmod 600" in loose.stderr
    from_env = edgeship("tokens", "list", "--server", live_server, token=tokens["admin"])
    assert from_env.returncode == 0 and "enrollment" in from_env.stdout
    missing = edgeship("tokens", "list", "--token-file", tmp_path / "nope", "--server", live_server)
    assert missing.returncode == 2 and "cannot read token file" in missing.stderr
    none = edgeship("tokens", "list", "--server", live_server)
    assert none.returncode != 0 and "--token-file" in none.stderr


def test_token_commands_create_rotate_and_revoke(live_server, tokens, tmp_path):
    admin = tokens["admin"]
    created = edgeship("tokens", "create", "ci", "--role", "publisher", "--expires-in", "3600",
                       "--server", live_server, token=admin)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()  # stdout holds the secret alone
    assert secret.startswith("es_") and "\n" not in secret and "created token #" in created.stderr
    token_id = created.stderr.split("#", 1)[1].split()[0]
    assert edgeship("models", "list", "--server", live_server, token=secret).returncode == 0
    out = tmp_path / "ci.token"
    rotated = edgeship("tokens", "rotate", token_id, "--out", out, "--server", live_server, token=admin)
    assert rotated.returncode == 0 and rotated.stdout == "" and "old secret revoked" in rotated.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert edgeship("models", "list", "--token-file", out, "--server", live_server).returncode == 0
    assert edgeship("models", "list", "--server", live_server, token=secret).returncode != 0
    enroll = edgeship("tokens", "create", "line-3", "--role", "enroll", "--max-uses", "5", "--device-class",
                      "rpi4", "--admission", "manual", "--server", live_server, token=admin)
    assert enroll.returncode == 0, enroll.stderr
    listing = edgeship("tokens", "list", "--server", live_server, token=admin).stdout
    assert "uses 0/5, rpi4, admission manual" in listing and "revoked" in listing
    first_admin = next(line.split()[0] for line in listing.splitlines() if " admin " in line)
    last = edgeship("tokens", "revoke", first_admin, "--server", live_server, token=admin)
    assert last.returncode != 0 and "no admin token that never expires" in last.stderr


def test_device_commands_list_accept_reject_and_revoke(app, live_server, tokens):
    from tests.rollout_server.conftest import register

    client = app.test_client()
    manual = client.post("/v1/tokens", json={"name": "m", "role": "enroll", "admission": "manual"},
                         headers={"Authorization": f"Bearer {tokens['admin']}"}).json["token"]
    waiting, doubtful = (register(client, manual)[0] for _ in range(2))
    active, _ = register(client, tokens["enroll"])
    admin = tokens["admin"]
    pending = edgeship("devices", "list", "--state", "pending", "--server", live_server, token=admin)
    assert pending.returncode == 0, pending.stderr
    assert waiting in pending.stdout and doubtful in pending.stdout and active not in pending.stdout
    accepted = edgeship("devices", "accept", waiting, "--server", live_server, token=admin)
    assert accepted.returncode == 0 and f"device {waiting}: active" in accepted.stdout
    rejected = edgeship("devices", "reject", doubtful, "--server", live_server, token=admin)
    assert rejected.returncode == 0 and f"device {doubtful}: rejected" in rejected.stdout
    revoked = edgeship("devices", "revoke", active, "--server", live_server, token=admin)
    assert revoked.returncode == 0 and f"device {active}: revoked" in revoked.stdout
    wrong = edgeship("devices", "reject", waiting, "--server", live_server, token=admin)
    assert wrong.returncode != 0 and "revoke it instead" in wrong.stderr
    everything = edgeship("devices", "list", "--server", live_server, token=admin).stdout
    states = {line.split()[0]: line.split()[1] for line in everything.splitlines()[1:]}
    assert states == {waiting: "active", doubtful: "rejected", active: "revoked"}


def test_simulate_reads_the_enrollment_token_from_a_file(app, live_server, tokens, tmp_path):
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    secret = tmp_path / "enroll.token"
    secret.write_text(tokens["enroll"] + "\n")
    secret.chmod(0o600)
    run = edgeship("simulate", "--server", live_server, "--enroll-token-file", secret, "--model",
                   "digits-cnn", "--devices", "3", "--duration", "1", "--window-seconds", "0.5",
                   "--workers", "2")
    assert run.returncode == 0, run.stderr
    listed = app.test_client().get("/v1/devices", headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert len(listed.json["devices"]) == 3
