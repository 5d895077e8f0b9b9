"""A device that refused a variant gets the next-best variant of the same release, and a device
can tell the server which runtimes it loads now (docs/protocol.md §3.1, §3.4, §3.7)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import select

from rollout_server.assignment import ReleaseInfo, VariantInfo, choose_variant, refused_variants
from rollout_server.counters import DEVICE_CHANGES
from rollout_server.db import session_scope
from rollout_server.models import Counter, Device
from tests.rollout_server.conftest import (
    BOTH_BACKENDS,
    auth,
    register,
    running_rollout,
    seed_release,
    variant_entry,
)

BOTH = {"onnxruntime": "1.20.1", "litert": "2.3.0"}


@pytest.fixture
def release_of_three(app) -> int:
    """v1, stable: by speed onnx-int8 (0.3 ms) > tflite-fp32 (0.5 ms) > onnx-fp32 (1 ms)."""
    return seed_release(app, "1", [
        variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64),
        variant_entry("tflite-fp32", "litert", 0.5, "b" * 64),
        variant_entry("onnx-int8", "onnxruntime", 0.3, "c" * 64),
    ], stable=True)


def test_refusals_narrow_the_choice_only_within_their_release():
    def variant(variant_id: str, runtime: str, p50_ms: float) -> VariantInfo:
        return VariantInfo(variant_id, runtime, "", "passed", "0" * 64, 1000, 0, p50_ms, {})

    release = ReleaseInfo(1, "2", {}, (variant("onnx", "onnxruntime", 1.0), variant("tflite", "litert", 2.0)))
    device = SimpleNamespace(id="d", device_class="rpi4", ram_bytes=0, runtimes=BOTH)
    assert refused_variants(release, "2", ["onnx", "not-in-it"]) == {"onnx"}
    assert refused_variants(release, "1", ["onnx"]) == frozenset()  # refused in another release
    assert choose_variant(release, device).variant_id == "onnx"
    assert choose_variant(release, device, frozenset({"onnx"})).variant_id == "tflite"
    assert choose_variant(release, device, frozenset({"onnx", "tflite"})) is None


def poll(client, device: str, credential: str, query: str = "", etag: str | None = None):
    headers = {**auth(credential), **({"If-None-Match": etag} if etag else {})}
    return client.get(f"/v1/devices/{device}/assignment?model=digits-cnn{query}", headers=headers)


def test_each_refused_variant_gives_way_to_the_next_best_of_the_same_release(client, tokens,
                                                                              release_of_three):
    device, credential = register(client, tokens["enroll"], runtimes=BOTH)
    first = poll(client, device, credential)
    assert first.json["variant"]["id"] == "onnx-int8"
    one = "&exclude_version=1&exclude=onnx-int8"
    refused = poll(client, device, credential, one, etag=first.headers["ETag"])
    assert refused.status_code == 200  # another variant: another body, another ETag
    assert refused.json["variant"]["id"] == "tflite-fp32" and refused.json["version"] == "1"
    assert refused.headers["ETag"] != first.headers["ETag"]
    again = poll(client, device, credential, one, etag=refused.headers["ETag"])
    assert again.status_code == 304
    two = poll(client, device, credential, "&exclude_version=1&exclude=onnx-int8&exclude=tflite-fp32")
    assert two.json["variant"]["id"] == "onnx-fp32"
    everything = "&exclude_version=1&exclude=onnx-int8&exclude=tflite-fp32&exclude=onnx-fp32"
    none_left = poll(client, device, credential, everything)
    assert none_left.status_code == 409 and none_left.json["error"] == "no_variant"
    assert "refused" in none_left.json["detail"]
    # the exclusions of one device touch nothing shared: a plain poll is answered as before
    plain = poll(client, device, credential)
    assert plain.json["variant"]["id"] == "onnx-int8" and plain.headers["ETag"] == first.headers["ETag"]


def test_exclusions_name_only_variants_of_the_named_release(client, tokens, release_of_three):
    device, credential = register(client, tokens["enroll"], runtimes=BOTH)
    other_release = poll(client, device, credential, "&exclude_version=7&exclude=onnx-int8")
    assert other_release.json["variant"]["id"] == "onnx-int8"  # a refusal of v7 says nothing of v1
    unknown = poll(client, device, credential, "&exclude_version=1&exclude=coreml-fp16&exclude=onnx-int8")
    assert unknown.json["variant"]["id"] == "tflite-fp32"


def test_excluding_cannot_move_a_device_to_another_release_or_cohort(app, live_server, tokens):
    """v2 (candidate, one variant) against v1 (baseline, one variant): a device that excludes
    everything its arm has gets 409, never the other arm's release."""
    fleet = running_rollout(app, live_server, tokens, [{"percent": 50}], {}, canary=1, stable=1)
    client = app.test_client()
    with session_scope(app) as session:
        ids = {row.credential_hash: row.id for row in session.scalars(select(Device))}

    def device_of(credential: str) -> str:
        from rollout_server.auth import hash_secret

        return ids[hash_secret(credential)]

    canary, stable = fleet["canary"][0], fleet["stable"][0]
    for credential, own, other in ((canary, ("2", "onnx-int8"), ("1", "onnx-fp32")),
                                   (stable, ("1", "onnx-fp32"), ("2", "onnx-int8"))):
        device = device_of(credential)
        cohort = poll(client, device, credential).json["cohort"]
        refused_all = poll(client, device, credential, f"&exclude_version={own[0]}&exclude={own[1]}")
        assert refused_all.status_code == 409 and refused_all.json["error"] == "no_variant"
        other_arm = poll(client, device, credential, f"&exclude_version={other[0]}&exclude={other[1]}")
        assert (other_arm.json["version"], other_arm.json["variant"]["id"], other_arm.json["cohort"]) == \
            (*own, cohort)


@pytest.mark.parametrize("query, fragment", [
    ("&exclude=onnx-int8", "exclude_version"),
    ("&exclude_version=&exclude=onnx-int8", "exclude_version"),
    ("&exclude_version=1" + "&exclude=x" * 17, "at most 16"),
    ("&exclude_version=1&exclude=" + "x" * 65, "1-64"),
    ("&exclude_version=1&exclude=", "1-64"),
])
def test_bad_exclusions_are_a_400_with_a_reason(client, tokens, release_of_three, query, fragment):
    device, credential = register(client, tokens["enroll"], runtimes=BOTH)
    response = poll(client, device, credential, query)
    assert response.status_code == 400 and response.json["error"] == "bad_request"
    assert fragment in response.json["detail"]


def device_changes(app) -> int:
    with session_scope(app) as session:
        return session.scalar(select(Counter.value).where(Counter.name == DEVICE_CHANGES))


@BOTH_BACKENDS
def test_a_device_updates_its_runtimes_and_its_assignment_follows(app, client, tokens, release_of_three):
    device, credential = register(client, tokens["enroll"], runtimes={"litert": "2.3.0"})
    assert poll(client, device, credential).json["variant"]["id"] == "tflite-fp32"
    url = f"/v1/devices/{device}/runtimes"
    updated = client.put(url, json={"runtimes": {"onnxruntime": "1.20.1"}}, headers=auth(credential))
    assert updated.status_code == 200
    assert updated.json == {"device_id": device, "runtimes": {"onnxruntime": "1.20.1"}}
    assert poll(client, device, credential).json["variant"]["id"] == "onnx-int8"
    before = device_changes(app)  # the same runtimes again (every agent start sends them): no write
    same = client.put(url, json={"runtimes": {"onnxruntime": "1.20.1"}}, headers=auth(credential))
    assert same.status_code == 200
    assert device_changes(app) == before


def test_runtimes_updates_are_checked_and_a_device_updates_only_its_own(client, tokens, release_of_three):
    device, credential = register(client, tokens["enroll"], runtimes=BOTH)
    _, other_credential = register(client, tokens["enroll"], runtimes=BOTH)
    url = f"/v1/devices/{device}/runtimes"
    assert client.put(url, json={"runtimes": {}}).status_code == 401
    assert client.put(url, json={"runtimes": {}}, headers=auth(other_credential)).status_code == 403
    for bad in ({"runtimes": {"onnxruntime": 1}}, {"runtimes": []}, {},
                {"runtimes": {f"r{i}": "1" for i in range(17)}}):
        response = client.put(url, json=bad, headers=auth(credential))
        assert response.status_code == 400 and response.json["error"] == "bad_request", bad
    assert poll(client, device, credential).json["variant"]["id"] == "onnx-int8"  # unchanged


def test_the_refused_variant_is_replaced_over_real_http(live_server, client, tokens, release_of_three):
    """The query the agent sends (repeated ``exclude``), through a real HTTP server."""
    device, credential = register(client, tokens["enroll"], runtimes=BOTH)
    query = [("model", "digits-cnn"), ("exclude_version", "1"), ("exclude", "onnx-int8")]
    answer = requests.get(f"{live_server}/v1/devices/{device}/assignment", params=query,
                          headers=auth(credential), timeout=30)
    assert answer.status_code == 200 and answer.json()["variant"]["id"] == "tflite-fp32"
