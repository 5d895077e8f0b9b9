"""Artifacts only to devices of their model (docs/protocol.md §5.1): a device credential
downloads the files of releases the server assigned it, and gets the same 404 as for a missing
artifact for anything else (another model's, a release not yet assigned to it); operator tokens
download anything."""

from __future__ import annotations

import hashlib
import io

import pytest

from rollout_server.artifact_store import app_store
from rollout_server.db import session_scope
from rollout_server.models import Model, Release, Variant
from tests.rollout_server.conftest import auth, fake_manifest, register, variant_entry


def blob(name: str) -> tuple[bytes, str]:
    data = f"artifact {name} ".encode() * 100
    return data, hashlib.sha256(data).hexdigest()


def seed(app, model_name: str, version: str, variant_blob: str, golden_blob: str, stable: bool) -> dict:
    """A release of ``model_name`` whose variant and golden files are stored; their digests."""
    shas = {}
    for kind, name in (("variant", variant_blob), ("golden", golden_blob)):
        data, sha = blob(name)
        app_store(app).put_stream(io.BytesIO(data), sha, len(data), max_bytes=2**20)
        shas[kind] = sha
    entry = variant_entry("onnx-fp32", "onnxruntime", 1.0, shas["variant"], size=len(blob(variant_blob)[0]))
    manifest = {**fake_manifest(version, [entry]), "model": model_name,
                "golden": {"file": "golden.npz", "sha256": shas["golden"], "count": 1}}
    with session_scope(app) as session:
        model = session.query(Model).filter_by(name=model_name).one_or_none()
        if model is None:
            model = Model(name=model_name)
            session.add(model)
            session.flush()
        release = Release(model_id=model.id, version=version, manifest=manifest, signed_by="test")
        session.add(release)
        session.flush()
        session.add(Variant(release_id=release.id, variant_id="onnx-fp32", format="onnx", precision="int8",
                            runtime="onnxruntime", runtime_min_version="1.0", validation="passed",
                            sha256=shas["variant"], size_bytes=len(blob(variant_blob)[0]), peak_rss_bytes=1))
        if stable:
            model.stable_release_id = release.id
    return shas


@pytest.fixture
def fleet(app):
    return {"digits": seed(app, "digits-cnn", "1", "d1", "dg", stable=True),
            "digits-2": seed(app, "digits-cnn", "2", "d2", "dg", stable=False),
            "other": seed(app, "other-model", "1", "o1", "og", stable=True)}


def get(client, sha: str, credential: str):
    return client.get(f"/v1/artifacts/{sha}", headers=auth(credential))


def test_a_device_gets_its_models_artifacts_and_404_for_another_models(app, client, tokens, fleet):
    device_id, credential = register(client, tokens["enroll"])
    before = get(client, fleet["digits"]["variant"], credential)
    assert before.status_code == 404  # nothing assigned yet
    poll = client.get(f"/v1/devices/{device_id}/assignment?model=digits-cnn", headers=auth(credential))
    assert poll.status_code == 200
    for sha in fleet["digits"].values():
        mine = get(client, sha, credential)
        assert mine.status_code == 200 and hashlib.sha256(mine.data).hexdigest() == sha
    missing = get(client, "e" * 64, credential)
    for sha in (fleet["other"]["variant"], fleet["other"]["golden"], fleet["digits-2"]["variant"]):
        hidden = get(client, sha, credential)
        assert hidden.status_code == 404 and hidden.json["error"] == missing.json["error"] == "not_found"
        assert hidden.json["detail"] == missing.json["detail"].replace("e" * 64, sha)  # no oracle
    viewer = client.post("/v1/tokens", json={"name": "v", "role": "viewer"},
                         headers=auth(tokens["admin"])).json["token"]
    assert get(client, fleet["other"]["variant"], viewer).status_code == 200  # operators: anything


def test_what_a_device_was_assigned_stays_downloadable_after_the_assignment_moves(app, client, tokens, fleet):
    device_id, credential = register(client, tokens["enroll"])
    url = f"/v1/devices/{device_id}/assignment?model=digits-cnn"
    assert client.get(url, headers=auth(credential)).json["version"] == "1"
    assert get(client, fleet["digits-2"]["variant"], credential).status_code == 404
    switched = client.post("/v1/models/digits-cnn/stable", json={"version": "2"},
                           headers=auth(tokens["admin"]))
    assert switched.status_code == 200
    assert client.get(url, headers=auth(credential)).json["version"] == "2"
    assert get(client, fleet["digits-2"]["variant"], credential).status_code == 200
    assert get(client, fleet["digits"]["variant"], credential).status_code == 200  # a rollback target
