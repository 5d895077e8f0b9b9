"""The registry: publishing signed releases (all or nothing), reading models, the stable release,
and `edgeship publish` against a live server over HTTP."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

from sqlalchemy import func, select

from edgeship.contract.manifest import canonical_json
from edgeship.contract.signing import generate_keypair, load_private_key, sign_manifest
from rollout_server.app import create_app
from rollout_server.auth import create_token
from rollout_server.db import session_scope
from rollout_server.models import AuditEntry, Model, Release, Variant
from tests.rollout_server.conftest import edgeship

ROOT = Path(__file__).resolve().parents[2]
EMPTY = {"models": 0, "releases": 0, "variants": 0, "audit": 0, "files": 0}


# -- helpers (test_artifacts.py uses them too) -------------------------------------------------

def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_release(directory: Path, key: Path, version: str = "1", model: str = "digits-cnn",
                 seed: int = 0, edit: Any = None) -> Path:
    """A small signed release by hand: two variants and a golden file of random bytes.

    ``edit(manifest_dict)`` may change the manifest before it is signed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = __import__("random").Random(seed)
    blobs = {"model-fp32.onnx": rng.randbytes(300_000), "model-int8.tflite": rng.randbytes(70_000),
             "golden.npz": rng.randbytes(2_000)}
    for name, blob in blobs.items():
        (directory / name).write_bytes(blob)
    sha = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}

    def variant(vid: str, fmt: str, runtime: str, file: str, peak: int) -> dict[str, Any]:
        return {"id": vid, "format": fmt, "precision": vid.split("-")[1], "compression": [],
                "file": file, "sha256": sha[file], "size_bytes": len(blobs[file]),
                "runtime": {"name": runtime, "min_version": "1.18.0"}, "validation": "passed",
                "metrics": {"agreement": 1.0, "latency_ms": {"p50": 0.1, "p95": 0.2},
                            "peak_rss_bytes": peak, "host": "test"}}

    manifest: dict[str, Any] = {
        "schema": "edgeship.manifest/v1", "model": model, "version": version,
        "task": {"kind": "classification",
                 "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}],
                 "outputs": [{"name": "output", "shape": [1, 10], "dtype": "float32"}]},
        "reference": {"format": "torch", "sha256": "0" * 64, "params": 10, "macs": 100},
        "golden": {"file": "golden.npz", "sha256": sha["golden.npz"], "count": 4},
        "variants": [variant("onnx-fp32", "onnx", "onnxruntime", "model-fp32.onnx", 60_000_000),
                     variant("tflite-int8", "tflite", "litert", "model-int8.tflite", 40_000_000)],
    }
    if edit is not None:
        edit(manifest)
    write_manifest(directory, sign_manifest(manifest, load_private_key(key)))
    return directory


def write_manifest(directory: Path, data: dict[str, Any]) -> None:
    (directory / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def upload(client, token: str, directory: Path, *, skip: tuple[str, ...] = (),
           replace: dict[str, bytes] | None = None, extra: dict[str, bytes] | None = None):
    """POST the release directory as the CLI would, optionally dropping/replacing/adding parts."""
    data = json.loads((directory / "manifest.json").read_text())
    names = dict.fromkeys(e["file"] for e in [data["golden"], *data["variants"]])
    form: dict[str, Any] = {"manifest": (io.BytesIO((directory / "manifest.json").read_bytes()),
                                         "manifest.json")}
    for name in names:
        if name in skip:
            continue
        blob = (replace or {}).get(name)
        if blob is None:
            blob = (directory / name).read_bytes() if (directory / name).is_file() else b"x"
        form[name] = (io.BytesIO(blob), name)
    for name, blob in (extra or {}).items():
        form[name] = (io.BytesIO(blob), name)
    return client.post("/v1/releases", data=form, content_type="multipart/form-data",
                       headers=auth(token))


def new_token(app, role: str) -> str:
    with session_scope(app) as session:
        return create_token(session, f"test-{role}", role)


def state(app) -> dict[str, int]:
    """Rows and artifact files: what a rejected release must leave untouched."""
    with session_scope(app) as session:
        counts = {name: session.scalar(select(func.count()).select_from(table))
                  for name, table in (("models", Model), ("releases", Release), ("variants", Variant))}
        counts["audit"] = session.scalar(select(func.count()).select_from(AuditEntry)
                                         .where(AuditEntry.action == "release.publish"))
    root = Path(app.config["DATA_DIR"]) / "artifacts"
    counts["files"] = sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    return counts


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def app(tmp_path: Path, signing_key: Path):
    """Overrides the shared ``app``: this one trusts the session's publisher key."""
    return create_app({"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": False,
                       "TRUSTED_KEYS": [str(signing_key.with_suffix(".pub"))]})


@pytest.fixture
def publisher(app) -> str:
    return new_token(app, "publisher")


@pytest.fixture
def release(tmp_path: Path, signing_key: Path) -> Path:
    return make_release(tmp_path / "release", signing_key)


# -- publishing -------------------------------------------------------------------------------

def test_publish_stores_rows_files_and_audit(app, client, tokens, publisher, release):
    response = upload(client, publisher, release)
    assert response.status_code == 201, response.json
    body = response.json
    assert (body["model"], body["version"], body["created"]) == ("digits-cnn", "1", True)
    manifest = json.loads((release / "manifest.json").read_text())
    assert body["signed_by"] == manifest["signature"]["key_id"]
    onnx = {v["id"]: v for v in body["variants"]}["onnx-fp32"]
    assert onnx["runtime"] == {"name": "onnxruntime", "min_version": "1.18.0"}
    assert onnx["peak_rss_bytes"] == 60_000_000 and onnx["size_bytes"] == 300_000
    assert onnx["url"] == f"/v1/artifacts/{onnx['sha256']}"
    assert state(app) == {"models": 1, "releases": 1, "variants": 2, "audit": 1, "files": 3}
    stored = Path(app.config["DATA_DIR"]) / "artifacts" / onnx["sha256"][:2] / onnx["sha256"]
    assert stored.read_bytes() == (release / "model-fp32.onnx").read_bytes()

    viewer = auth(new_token(app, "viewer"))
    models = client.get("/v1/models", headers=viewer).json["models"]
    assert [(m["name"], m["releases"], m["stable_version"]) for m in models] == [("digits-cnn", 1, None)]
    model = client.get("/v1/models/digits-cnn", headers=viewer).json
    assert model["releases"][0]["variants"] == ["onnx-fp32", "tflite-int8"]
    detail = client.get("/v1/models/digits-cnn/releases/1", headers=viewer).json
    assert canonical_json(detail["manifest"]) == canonical_json(manifest)
    assert detail["golden"]["sha256"] == manifest["golden"]["sha256"]
    assert client.get("/v1/models/nope", headers=viewer).status_code == 404
    assert client.get("/v1/models/digits-cnn/releases/9", headers=viewer).status_code == 404


def test_identical_republish_is_200_and_a_changed_one_409(app, client, publisher, release, tmp_path,
                                                          signing_key):
    assert upload(client, publisher, release).status_code == 201
    before = state(app)
    again = upload(client, publisher, release)
    assert again.status_code == 200 and again.json["created"] is False
    # same version, different content (new bytes in one file): refused, the new file not kept
    changed = make_release(tmp_path / "changed", signing_key, seed=1)
    response = upload(client, publisher, changed)
    assert response.status_code == 409 and response.json["error"] == "conflict"
    assert state(app) == before
    assert upload(client, publisher, make_release(tmp_path / "v2", signing_key, version="2",
                                                  seed=1)).status_code == 201


def _tamper_byte(release: Path, _key: Path) -> None:
    raw = bytearray((release / "manifest.json").read_bytes())
    at = raw.index(b'"count": 4') + len(b'"count": ')
    raw[at] = ord("5")  # still valid JSON, no longer what was signed
    (release / "manifest.json").write_bytes(bytes(raw))


def _traversal(release: Path, key: Path) -> None:
    def edit(manifest: dict) -> None:
        manifest["variants"][0]["file"] = "../../evil.onnx"

    make_release(release, key, edit=edit)


def _untrusted(release: Path, _key: Path) -> None:
    other, _ = generate_keypair(release.parent / "other-keys", "intruder")
    make_release(release, other)


def _bad_size(release: Path, key: Path) -> None:
    make_release(release, key, edit=lambda m: m["variants"][1].update(size_bytes=69_999))


def _unsigned(release: Path, _key: Path) -> None:
    data = json.loads((release / "manifest.json").read_text())
    del data["signature"]
    write_manifest(release, data)


def _odd_signature(release: Path, _key: Path) -> None:
    data = json.loads((release / "manifest.json").read_text())
    data["signature"]["value"] = 12
    write_manifest(release, data)


def _schema(release: Path, key: Path) -> None:
    make_release(release, key, edit=lambda m: m["variants"][0].update(runtime={"name": 7}))


@pytest.mark.parametrize(("prepare", "upload_kwargs", "status", "error"), [
    (_tamper_byte, {}, 400, "bad_signature"),
    (_unsigned, {}, 400, "bad_signature"),
    (_odd_signature, {}, 400, "bad_signature"),
    (_untrusted, {}, 403, "untrusted_key"),
    (_traversal, {}, 400, "invalid_manifest"),
    (_schema, {}, 400, "invalid_manifest"),
    (_bad_size, {}, 400, "size_mismatch"),
    (None, {"replace": {"model-int8.tflite": b"\0" * 70_000}}, 400, "digest_mismatch"),
    (None, {"skip": ("golden.npz",)}, 400, "missing_file"),
    (None, {"extra": {"../../etc/cron.d/evil": b"x"}}, 400, "unexpected_file"),
], ids=["tampered-byte", "unsigned", "odd-signature", "untrusted-key", "path-traversal", "bad-runtime",
        "size-mismatch", "sha-mismatch", "missing-file", "extra-part"])
def test_bad_release_is_refused_whole_and_stores_nothing(app, client, publisher, release, signing_key,
                                                         prepare, upload_kwargs, status, error):
    if prepare is not None:
        prepare(release, signing_key)
    response = upload(client, publisher, release, **upload_kwargs)
    assert (response.status_code, response.json["error"]) == (status, error), response.json
    assert response.json["detail"]
    assert state(app) == EMPTY


def test_failed_publish_keeps_artifacts_other_releases_use(app, client, publisher, release, tmp_path,
                                                           signing_key):
    assert upload(client, publisher, release).status_code == 201
    before = state(app)
    v2 = make_release(tmp_path / "v2", signing_key, version="2")  # same files as version 1
    response = upload(client, publisher, v2, replace={"golden.npz": b"not the golden file"})
    assert response.status_code == 400
    assert state(app) == before
    assert upload(client, publisher, v2).status_code == 201


def test_upload_without_manifest_part_or_multipart_is_400(app, client, publisher):
    assert client.post("/v1/releases", json={"x": 1}, headers=auth(publisher)).json["error"] == \
        "missing_manifest"
    bad = client.post("/v1/releases", data={"manifest": (io.BytesIO(b"{not json"), "manifest.json")},
                      content_type="multipart/form-data", headers=auth(publisher))
    assert (bad.status_code, bad.json["error"]) == (400, "invalid_manifest")
    assert state(app) == EMPTY


def test_roles_and_missing_token(app, client, tokens, release):
    viewer = new_token(app, "viewer")
    response = upload(client, viewer, release)
    assert (response.status_code, response.json["error"]) == (403, "forbidden")
    assert client.post("/v1/releases").status_code == 401
    assert client.get("/v1/models").status_code == 401
    assert upload(client, tokens["enroll"], release).status_code == 401
    assert state(app) == EMPTY


def test_set_stable_needs_operator_and_is_audited(app, client, tokens, publisher, release):
    assert upload(client, publisher, release).status_code == 201
    body = {"version": "1"}
    assert client.post("/v1/models/digits-cnn/stable", json=body, headers=auth(publisher)).status_code == 403
    operator = auth(new_token(app, "operator"))
    response = client.post("/v1/models/digits-cnn/stable", json=body, headers=operator)
    assert response.status_code == 200, response.json
    assert response.json == {"model": "digits-cnn", "stable_version": "1", "previous_version": None}
    assert client.get("/v1/models/digits-cnn", headers=operator).json["stable_version"] == "1"
    assert client.post("/v1/models/digits-cnn/stable", json={"version": "7"}, headers=operator).status_code \
        == 404
    assert client.post("/v1/models/digits-cnn/stable", json={"version": 7}, headers=operator).status_code \
        == 400
    audit = client.get("/v1/audit", headers=auth(tokens["admin"]))
    assert "model.set_stable" in json.dumps(audit.json)


# -- over real HTTP with the CLI (live_server and edgeship() in conftest) ---------------------

def test_edgeship_publish_over_http(app, live_server, publisher, release, tmp_path, signing_key):
    # "--token=...": a token may start with "-", which argparse would take for an option
    done = edgeship("publish", release, "--server", live_server, f"--token={publisher}")
    assert done.returncode == 0, done.stderr
    assert "published: digits-cnn version 1" in done.stdout and "onnx-fp32" in done.stdout
    again = edgeship("publish", release, "--server", live_server, token=publisher)  # $EDGESHIP_TOKEN
    assert again.returncode == 0 and "already published" in again.stdout

    changed = make_release(tmp_path / "changed", signing_key, seed=3)
    refused = edgeship("publish", changed, "--server", live_server, f"--token={publisher}")
    assert refused.returncode != 0
    assert refused.stderr.startswith("edgeship publish: error: digits-cnn version 1 is already published")
    _tamper_byte(changed, signing_key)
    refused = edgeship("publish", changed, "--server", live_server, f"--token={publisher}")
    assert refused.returncode != 0 and "does not verify" in refused.stderr
    assert state(app) == {"models": 1, "releases": 1, "variants": 2, "audit": 1, "files": 3}

    no_token = edgeship("publish", release, "--server", live_server)
    assert no_token.returncode != 0 and "no token" in no_token.stderr
    missing = edgeship("publish", tmp_path / "nowhere", "--server", live_server, f"--token={publisher}")
    assert missing.returncode != 0 and "not a release directory" in missing.stderr


@pytest.mark.slow
def test_publish_a_converted_digits_release(app, live_server, publisher, digits_dir, signing_key, tmp_path):
    pytest.importorskip("onnxruntime")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[[variants]]\nkind = "onnx-fp32"\n\n[[variants]]\nkind = "onnx-int8-static"\n')
    out = tmp_path / "digits-release"
    convert = edgeship("convert", "--model", digits_dir / "digits_cnn.pt", "--input", "image:1x1x8x8:float32",
                       "--eval", digits_dir / "eval.npz", "--model-name", "digits-cnn", "--recipe", recipe,
                       "--signing-key", signing_key, "--out", out, "--quiet")
    assert convert.returncode == 0, convert.stderr[-2000:]
    done = edgeship("publish", out, "--server", live_server, f"--token={publisher}")
    assert done.returncode == 0, done.stderr
    assert state(app)["variants"] == len(json.loads((out / "manifest.json").read_text())["variants"])
