"""A release's report figures: listed and signed in the manifest, uploaded by `edgeship publish`,
stored under their digests and shown on the console's release page, to a signed-in operator only;
never downloadable by a device."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

from edgeship.contract.signing import generate_keypair
from rollout_server.app import create_app
from tests.rollout_server.conftest import auth, edgeship, register
from tests.rollout_server.test_console_sessions import sign_in
from tests.rollout_server.test_registry import make_release, new_token, state, upload


def png(width: int, height: int, rgb: tuple[int, int, int] = (31, 111, 235)) -> bytes:
    """A valid PNG of one colour (what a browser decodes), without an imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def with_figures(directory: Path, key: Path, **figures: bytes) -> Path:
    """``make_release`` with ``figures`` (file name → bytes) written and listed in the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in figures.items():
        (directory / name).write_bytes(blob)

    def edit(manifest: dict) -> None:
        manifest["figures"] = [{"file": name, "sha256": hashlib.sha256(blob).hexdigest(),
                                "size_bytes": len(blob), "title": f"the {name} figure"}
                               for name, blob in figures.items()]

    return make_release(directory, key, edit=edit)


def test_published_figures_are_shown_to_operators_and_never_to_devices(tmp_path, live_server, app, tokens):
    private, _ = generate_keypair(tmp_path / "keys")
    app.config["TRUSTED_KEYS"] = [str(private.with_suffix(".pub"))]
    chart = png(40, 20)
    release = with_figures(tmp_path / "release", private, **{"report.png": chart, "pareto.png": png(8, 8)})
    done = edgeship("publish", release, "--server", live_server, f"--token={tokens['admin']}")
    assert done.returncode == 0, done.stderr
    client = app.test_client()
    figure_url = "/console/models/digits-cnn/1/figures/report.png"
    assert client.get(figure_url).status_code in (302, 303)  # no session: sent to sign in
    sign_in(client, tokens["admin"])
    html = client.get("/console/models/digits-cnn/1").text
    assert f'src="{figure_url}"' in html and "the pareto.png figure" in html
    shown = client.get(figure_url)
    assert shown.status_code == 200 and shown.data == chart and shown.mimetype == "image/png"
    assert shown.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/console/models/digits-cnn/1/figures/golden.npz").status_code == 404  # not a figure
    assert client.get("/console/models/digits-cnn/1/figures/nope.png").status_code == 404
    device, credential = register(client, tokens["enroll"])
    client.post("/v1/models/digits-cnn/stable", json={"version": "1"}, headers=auth(tokens["admin"]))
    assigned = client.get(f"/v1/devices/{device}/assignment?model=digits-cnn", headers=auth(credential))
    assert assigned.status_code == 200
    refused = client.get(f"/v1/artifacts/{hashlib.sha256(chart).hexdigest()}", headers=auth(credential))
    assert refused.status_code == 404 and refused.json["error"] == "not_found"


def test_a_figure_not_uploaded_or_not_a_png_refuses_the_release_and_stores_nothing(tmp_path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    app = create_app({"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": False,
                      "TRUSTED_KEYS": [str(public)]})
    client = app.test_client()
    publisher = new_token(app, "publisher")
    before = state(app)
    release = with_figures(tmp_path / "a", private, **{"report.png": png(4, 4)})
    missing = upload(client, publisher, release)  # uploads the variants and golden set only
    assert missing.status_code == 400 and missing.json["error"] == "missing_file", missing.json
    assert "report.png" in missing.json["detail"]
    named = with_figures(tmp_path / "b", private, **{"report.svg": b"<svg/>"})
    refused = upload(client, publisher, named, extra={"report.svg": b"<svg/>"})
    assert refused.status_code == 400 and refused.json["error"] == "invalid_manifest"
    assert "figures[0].file" in refused.json["detail"]
    assert state(app) == before
