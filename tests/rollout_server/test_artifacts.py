"""The content-addressed artifact store and ``GET /v1/artifacts/<sha256>`` with HTTP Range."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("flask")

from rollout_server.artifact_store import ArtifactStore, StoreError
from tests.rollout_server import test_registry as registry_tests
from tests.rollout_server.conftest import register
from tests.rollout_server.test_registry import auth, new_token, upload

# fixtures shared with test_registry.py (the app trusts the session's publisher key)
app = registry_tests.app
publisher = registry_tests.publisher
release = registry_tests.release

BLOB = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(BLOB).hexdigest()


# -- the store --------------------------------------------------------------------------------

def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_put_stream_stores_under_the_digest(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    path = store.put_stream(io.BytesIO(BLOB), SHA, len(BLOB), max_bytes=1 << 20)
    assert path == tmp_path / "a" / SHA[:2] / SHA == store.path_for(SHA)
    assert path.read_bytes() == BLOB and store.has(SHA)
    assert files_under(tmp_path / "a") == [path]


@pytest.mark.parametrize(("sha", "size", "limit", "reason"), [
    ("0" * 64, len(BLOB), 1 << 20, "digest_mismatch"),
    (SHA, len(BLOB) + 1, 1 << 20, "size_mismatch"),
    (SHA, None, 1000, "too_large"),
])
def test_put_stream_mismatch_stores_nothing(tmp_path, sha, size, limit, reason):
    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(StoreError) as caught:
        store.put_stream(io.BytesIO(BLOB), sha, size, max_bytes=limit)
    assert caught.value.reason == reason
    assert not store.has(sha) and files_under(tmp_path / "a") == []


def test_a_crash_mid_write_leaves_nothing(tmp_path):
    class Dying(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell() >= 4096:
                raise ConnectionResetError("client went away")
            return super().read(min(size, 4096))

    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(ConnectionResetError):
        store.put_stream(Dying(BLOB), SHA, len(BLOB), max_bytes=1 << 20)
    assert files_under(tmp_path / "a") == []


def test_staging_commits_all_or_nothing(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    with store.staging() as staging:
        staging.add(io.BytesIO(BLOB), SHA, len(BLOB), 1 << 20)
        with pytest.raises(StoreError):
            staging.add(io.BytesIO(b"other"), SHA, None, 1 << 20)
    assert files_under(tmp_path / "a") == []  # not committed: gone
    with store.staging() as staging:
        staging.add(io.BytesIO(BLOB), SHA, len(BLOB), 1 << 20)
        assert staging.commit() == [SHA]
    assert files_under(tmp_path / "a") == [store.path_for(SHA)]


def test_path_for_refuses_anything_but_a_digest(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    for bad in ("../" * 10 + "etc/passwd", SHA.upper(), SHA[:-1], ""):
        assert not store.has(bad)
        with pytest.raises(ValueError):
            store.path_for(bad)


# -- downloads --------------------------------------------------------------------------------

@pytest.fixture
def published(client, publisher, release) -> dict:
    response = upload(client, publisher, release)
    assert response.status_code == 201, response.json
    return response.json


def onnx_variant(published: dict) -> dict:
    return {v["id"]: v for v in published["variants"]}["onnx-fp32"]


def test_range_download_resumes_with_the_right_bytes(app, client, published, release):
    variant = onnx_variant(published)
    blob = (release / "model-fp32.onnx").read_bytes()
    viewer = auth(new_token(app, "viewer"))
    full = client.get(variant["url"], headers=viewer)
    assert full.status_code == 200 and full.data == blob
    assert full.headers["ETag"] == f'"{variant["sha256"]}"' and full.headers["Accept-Ranges"] == "bytes"
    part = client.get(variant["url"], headers={**viewer, "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.data == blob[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(blob)}"
    tail = client.get(variant["url"], headers={**viewer, "Range": "bytes=299000-"})
    assert tail.status_code == 206 and tail.data == blob[299000:]
    same = client.get(variant["url"], headers={**viewer, "If-None-Match": full.headers["ETag"]})
    assert same.status_code == 304
    beyond = client.get(variant["url"], headers={**viewer, "Range": f"bytes={len(blob) + 10}-"})
    assert beyond.status_code == 416 and beyond.json["error"] == "range_not_satisfiable"
    assert beyond.headers["Content-Range"] == f"bytes */{len(blob)}"


def assigned_device(client, tokens: dict, published: dict) -> tuple[str, str]:
    """A device whose assignment names the published release (devices download only the
    artifacts of releases they were assigned: test_admission.py)."""
    stable = client.post(f"/v1/models/{published['model']}/stable", json={"version": published["version"]},
                         headers=auth(tokens["admin"]))
    assert stable.status_code == 200, stable.json
    device_id, credential = register(client, tokens["enroll"])
    poll = client.get(f"/v1/devices/{device_id}/assignment?model={published['model']}",
                      headers=auth(credential))
    assert poll.status_code == 200, poll.json
    return device_id, credential


def test_devices_download_variants_and_the_golden_file(client, tokens, published, release):
    _, credential = assigned_device(client, tokens, published)
    golden = client.get(published["golden"]["url"], headers=auth(credential))
    assert golden.status_code == 200 and golden.data == (release / "golden.npz").read_bytes()
    assert client.get(onnx_variant(published)["url"], headers=auth(credential)).status_code == 200


@pytest.mark.parametrize(("name", "status", "error"), [
    ("f" * 64, 404, "not_found"),
    ("F" * 64, 400, "bad_digest"),
    ("abc", 400, "bad_digest"),
    ("g" * 64, 400, "bad_digest"),
    ("..%2F..%2Fedgeship.db", 404, "not_found"),  # a slash never reaches the view
])
def test_unknown_or_malformed_digest(app, client, published, name, status, error):
    response = client.get(f"/v1/artifacts/{name}", headers=auth(new_token(app, "viewer")))
    assert (response.status_code, response.json["error"]) == (status, error)


def test_download_needs_a_credential(client, tokens, published):
    url = onnx_variant(published)["url"]
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth("not-a-token")).status_code == 401
    assert client.get(url, headers=auth(tokens["enroll"])).status_code == 401


def test_range_over_http(app, live_server, published, release):
    requests = pytest.importorskip("requests")
    variant = onnx_variant(published)
    blob = (release / "model-fp32.onnx").read_bytes()
    headers = {**auth(new_token(app, "viewer")), "Range": "bytes=123456-"}
    response = requests.get(live_server + variant["url"], headers=headers, timeout=30)
    assert response.status_code == 206 and response.content == blob[123456:]
    assert hashlib.sha256(blob[:123456] + response.content).hexdigest() == variant["sha256"]
    assert json.loads(requests.get(live_server + "/v1/artifacts/xyz", headers=headers, timeout=30).text)[
        "error"] == "bad_digest"


def test_a_revoked_device_is_told_so_on_downloads_too(client, tokens, published):
    device_id, credential = assigned_device(client, tokens, published)
    url = onnx_variant(published)["url"]
    assert client.get(url, headers=auth(credential)).status_code == 200
    assert client.post(f"/v1/devices/{device_id}/revoke", headers=auth(tokens["admin"])).status_code == 200
    refused = client.get(url, headers=auth(credential))
    assert (refused.status_code, refused.json["error"]) == (401, "device_revoked")
    unknown = client.get(url, headers=auth("es_not-a-device"))
    assert (unknown.status_code, unknown.json["error"]) == (401, "unauthorized")
