from __future__ import annotations

import copy
import os

import pytest

from edgeship.contract.errors import SigningError
from edgeship.contract.manifest import Manifest, ManifestError, canonical_json, check_manifest
from edgeship.contract.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    resolve_key_path,
    sign_manifest,
    verify_manifest,
)

SHA = "a" * 64


def sample_manifest() -> dict:
    return {
        "schema": "edgeship.manifest/v1", "model": "digits-cnn", "version": "1",
        "task": {"kind": "classification",
                 "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}],
                 "outputs": [{"name": "output", "shape": [1, 10], "dtype": "float32"}]},
        "reference": {"format": "torch", "sha256": SHA, "params": 10, "macs": 20},
        "golden": {"file": "golden.npz", "sha256": SHA, "count": 4},
        "variants": [{
            "id": "onnx-fp32", "format": "onnx", "precision": "fp32", "compression": [],
            "file": "onnx-fp32.onnx", "sha256": SHA, "size_bytes": 100,
            "runtime": {"name": "onnxruntime", "min_version": "1.18"},
            "metrics": {"agreement": 1.0, "latency_ms": {"p50": 0.1, "p95": 0.2}, "host": "x"},
            "validation": "passed",
        }],
    }


def test_manifest_round_trips_and_canonical_bytes_are_stable():
    data = sample_manifest()
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    shuffled = dict(reversed(list(data.items())))
    assert canonical_json(shuffled) == canonical_json(data)


@pytest.mark.parametrize(
    "path, value, fragment",
    [(("model",), "Digits_CNN", "model"), (("task", "kind"), "vision", "task.kind"),
     (("variants", 0, "file"), "../etc/passwd", "plain file name"),
     (("variants", 0, "sha256"), "XYZ", "sha256"),
     (("variants", 0, "validation"), "ok", "validation"),
     (("golden", "file"), "a/b.npz", "golden.file")],
)
def test_check_manifest_names_the_bad_field(path, value, fragment):
    data = sample_manifest()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ManifestError, match=fragment):
        check_manifest(data)


def test_sign_and_verify(tmp_path):
    private, public = generate_keypair(tmp_path)
    assert oct(os.stat(private).st_mode & 0o777) == "0o600"
    key = load_private_key(private)
    signed = sign_manifest(sample_manifest(), key)
    pub = load_public_key(public)
    trusted = {key_id(pub): pub}
    assert verify_manifest(signed, trusted) == key_id(pub)

    tampered = copy.deepcopy(signed)
    tampered["variants"][0]["sha256"] = "b" * 64
    with pytest.raises(SigningError, match="does not verify"):
        verify_manifest(tampered, trusted)
    with pytest.raises(SigningError, match="unknown key"):
        verify_manifest(signed, {})
    with pytest.raises(SigningError, match="not signed"):
        verify_manifest(sample_manifest(), trusted)
    for field, odd in (("value", 7), ("value", None), ("key_id", ["k"]), ("key_id", {"k": 1})):
        malformed = copy.deepcopy(signed)
        malformed["signature"][field] = odd  # a refusal with a reason, never a TypeError
        with pytest.raises(SigningError, match="must be strings"):
            verify_manifest(malformed, trusted)


def test_keys_are_never_overwritten_and_key_path_is_required(tmp_path, monkeypatch):
    generate_keypair(tmp_path)
    with pytest.raises(SigningError, match="already exists"):
        generate_keypair(tmp_path)
    monkeypatch.delenv("EDGESHIP_SIGNING_KEY", raising=False)
    with pytest.raises(SigningError, match="no signing key"):
        resolve_key_path(None)
    monkeypatch.setenv("EDGESHIP_SIGNING_KEY", str(tmp_path / "publisher.key"))
    assert resolve_key_path(None) == tmp_path / "publisher.key"
