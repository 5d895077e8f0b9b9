"""Server set-up for the benchmark: a hand-signed release, published and made stable, and a
fleet of registered devices whose credentials the wrk scripts read."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MODEL = "bench-model"
VERSION = "1"
DEVICE = {"device_class": "rpi4", "arch": "aarch64", "os": "Raspberry Pi OS 12", "ram_bytes": 4 * 2**30,
          "runtimes": {"onnxruntime": "1.20.1", "litert": "2.3.0"}}


def make_release(directory: Path, private_key: Path, figures: dict[str, bytes] | None = None) -> Path:
    """A small release signed by hand: two variants and a golden file of random bytes, and the
    report ``figures`` given (``{file name: PNG bytes}``)."""
    from edgeship.contract.signing import load_private_key, sign_manifest

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    blobs = {"model-fp32.onnx": rng.randbytes(8_000), "model-int8.tflite": rng.randbytes(2_000),
             "golden.npz": rng.randbytes(500), **(figures or {})}
    for name, blob in blobs.items():
        (directory / name).write_bytes(blob)
    sha = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}

    def variant(vid: str, fmt: str, runtime: str, file: str, p50: float) -> dict[str, Any]:
        return {"id": vid, "format": fmt, "precision": vid.split("-")[1], "compression": [],
                "file": file, "sha256": sha[file], "size_bytes": len(blobs[file]),
                "runtime": {"name": runtime, "min_version": "1.18.0"}, "validation": "passed",
                "metrics": {"agreement": 1.0, "latency_ms": {"p50": p50, "p95": 2 * p50},
                            "peak_rss_bytes": 50_000_000, "host": "bench"}}

    manifest = {
        "schema": "edgeship.manifest/v1", "model": MODEL, "version": VERSION,
        "task": {"kind": "classification",
                 "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}],
                 "outputs": [{"name": "output", "shape": [1, 10], "dtype": "float32"}]},
        "reference": {"format": "torch", "sha256": "0" * 64, "params": 10, "macs": 100},
        "golden": {"file": "golden.npz", "sha256": sha["golden.npz"], "count": 4},
        "variants": [variant("onnx-fp32", "onnx", "onnxruntime", "model-fp32.onnx", 0.2),
                     variant("tflite-int8", "tflite", "litert", "model-int8.tflite", 0.1)],
    }
    if figures:
        manifest["figures"] = [{"file": name, "sha256": sha[name], "size_bytes": len(blobs[name]),
                                "title": f"figure {name}"} for name in figures]
    signed = sign_manifest(manifest, load_private_key(private_key))
    (directory / "manifest.json").write_text(json.dumps(signed, indent=2, sort_keys=True) + "\n")
    return directory


def report_template() -> str:
    """One valid report as JSON (schema 2, as this release's agents send), its id the
    placeholder ``@ID@`` the Lua script fills in. Its 98 latencies spread over the sketch buckets
    of a log-normal (median 4 ms, sigma 0.5), as a real window's do."""
    import random

    from edgeship.contract.sketch import LatencySketch

    now = dt.datetime.now(dt.timezone.utc)
    draws = random.Random(0)
    latency = LatencySketch()
    latency.add_all(draws.lognormvariate(math.log(0.004), 0.5) for _ in range(98))
    return json.dumps({
        "id": "@ID@", "model": MODEL, "version": VERSION, "variant": "tflite-int8", "cohort": "stable",
        "window_start": (now - dt.timedelta(seconds=30)).isoformat(), "window_end": now.isoformat(),
        "inferences": 100, "errors": {"runtime_error": 2}, "schema": 2, "latency": latency.to_wire(),
        "labelled": 20, "correct": 19, "latency_sum_seconds": 0.45,
    }, separators=(",", ":"))


def first_start_tokens(data_dir: Path) -> dict[str, str]:
    """The admin and enrollment tokens of ``DATA_DIR/first-start-tokens.txt``."""
    from rollout_server.auth import FIRST_START_FILE

    text = (data_dir / FIRST_START_FILE).read_text()
    return dict(line.split("=", 1) for line in text.split())


def setup_server(url: str, data_dir: Path, release_dir: Path, devices: int, devices_file: Path) -> None:
    """Publish and set stable the release, register devices, write ``id credential etag`` lines."""
    import requests

    from rollout_server.client import ServerClient

    tokens = first_start_tokens(data_dir)
    admin = ServerClient(url, tokens["EDGESHIP_ADMIN_TOKEN"])
    admin.publish(release_dir)
    admin.post(f"/v1/models/{MODEL}/stable", {"version": VERSION})
    local = threading.local()

    def enroll(_: int) -> str:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = {"enrollment_token": tokens["EDGESHIP_ENROLL_TOKEN"], **DEVICE}
        answer = session.post(f"{url}/v1/devices/register", json=body, timeout=30)
        answer.raise_for_status()
        device_id, credential = answer.json()["device_id"], answer.json()["credential"]
        got = session.get(f"{url}/v1/devices/{device_id}/assignment", params={"model": MODEL},
                          headers={"Authorization": f"Bearer {credential}"}, timeout=30)
        got.raise_for_status()
        return f"{device_id} {credential} {got.headers['ETag'].strip('W/').strip(chr(34))}"

    with ThreadPoolExecutor(8) as pool:
        lines = list(pool.map(enroll, range(devices)))
    devices_file.write_text("\n".join(lines) + "\n")


def stored_reports(url: str) -> int | None:
    """``edgeship_reports_total{outcome="accepted"}`` from ``/metrics`` (None if unreadable)."""
    import requests

    try:
        text = requests.get(f"{url}/metrics", timeout=30).text
    except requests.RequestException:
        return None
    found = re.search(r'^edgeship_reports_total\{outcome="accepted"\} ([\d.e+]+)$', text, re.M)
    return int(float(found.group(1))) if found else None


# -- the run -----------------------------------------------------------------------------------
