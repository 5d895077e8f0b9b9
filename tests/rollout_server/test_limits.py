"""Request body limits per route and the JSON nesting bound, over real HTTP (issue 19).

The rows of the issue, replayed against the app served on a loopback port: a 200 MB body to the
unauthenticated registration was read whole before it was refused (the 2 GiB release limit
applied to every route); JSON nested 1,500 deep was a 500 with a traceback per request. Bodies
are sent with ``http.client`` by hand, so a test can declare a length it never sends, or send
``Transfer-Encoding: chunked`` without ever finishing: an answer that arrives anyway proves the
server refused the body without reading it whole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import logging
import uuid
from pathlib import Path

import pytest
import requests

from edgeship.contract.latency import BUCKET_COUNT
from rollout_server.app import create_app
from rollout_server.body_limits import check_json_depth
from rollout_server.errors import ApiError
from tests.rollout_server.conftest import auth, register, seed_release, serving, variant_entry
from tests.rollout_server.test_registry import make_release

MB = 2**20
CHUNK = 16 * 1024


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def start(port: int, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    connection.putrequest(method, path)
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    return connection


def send_quietly(connection: http.client.HTTPConnection, data: bytes) -> None:
    """Send, ignoring a server that already answered and closed (that is what is tested)."""
    with contextlib.suppress(OSError):
        connection.send(data)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def answer(connection: http.client.HTTPConnection) -> tuple[int, dict, dict]:
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.getheader("Content-Type", "").startswith("application/json"), body[:200]
    return response.status, json.loads(body), dict(response.getheaders())


def post_chunked(base: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """POST ``body`` whole, as ``Transfer-Encoding: chunked`` (no Content-Length); JSON unless
    ``headers`` say another Content-Type."""
    connection = start(port_of(base), "POST", path, {"Content-Type": "application/json", **headers,
                                                     "Transfer-Encoding": "chunked"})
    for offset in range(0, len(body), CHUNK):
        send_quietly(connection, chunk(body[offset:offset + CHUNK]))
    send_quietly(connection, b"0\r\n\r\n")
    status, data, _ = answer(connection)
    return status, data


# -- the 200 MB registration -------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/devices/register"),  # the row of the issue: no credential needed
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/v1/tokens"),
    ("POST", "/v1/reports"), ("POST", "/v1/rollouts"),
])
def test_a_declared_200_mb_body_is_refused_before_it_is_read(live_server, method, path):
    """The answer comes after 64 KiB of the 200 MB were sent: nothing waited for the rest."""
    connection = start(port_of(live_server), method, path, {"Content-Type": "application/json",
                                                             "Content-Length": str(200 * MB)})
    send_quietly(connection, b"{" + b" " * (64 * 1024))
    status, body, _ = answer(connection)
    assert status == 413 and body["error"] == "payload_too_large", body
    assert "limit" in body["detail"]


def test_a_chunked_registration_is_counted_as_it_arrives(live_server, tokens):
    """1 MB of chunks and no last chunk: a server that read to the end would wait forever."""
    connection = start(port_of(live_server), "POST", "/v1/devices/register",
                       {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    send_quietly(connection, chunk(b'{"enrollment_token": "' + tokens["enroll"].encode() + b'", "x": "'))
    for _ in range(MB // CHUNK):
        send_quietly(connection, chunk(b"y" * CHUNK))
    status, body, _ = answer(connection)
    assert status == 413 and body["error"] == "payload_too_large"
    assert "16384 bytes" in body["detail"]


def test_registration_is_bounded_at_its_own_limit_not_the_release_limit(app, live_server, tokens):
    limit = app.config["MAX_REGISTER_BYTES"]
    assert limit < app.config["MAX_REQUEST_BYTES"] < app.config["MAX_RELEASE_BYTES"]
    fields = {"enrollment_token": tokens["enroll"], "device_class": "rpi4", "arch": "aarch64",
              "os": "x", "ram_bytes": 1, "runtimes": {}}

    def padded(size: int) -> bytes:
        body = json.dumps({**fields, "pad": ""}).encode()
        return json.dumps({**fields, "pad": "p" * (size - len(body))}).encode()

    exactly, over = padded(limit), padded(limit + 1)
    assert (len(exactly), len(over)) == (limit, limit + 1)
    for send in (lambda b: post_chunked(live_server, "/v1/devices/register", b, {}),
                 lambda b: _post_declared(live_server, "/v1/devices/register", b, {})):
        status, body = send(exactly)
        assert status == 201, body
        status, body = send(over)
        assert status == 413 and body["error"] == "payload_too_large", body


def _post_declared(base: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    answer_ = requests.post(f"{base}{path}", data=body, timeout=30,
                            headers={**headers, "Content-Type": "application/json"})
    return answer_.status_code, answer_.json()


# -- reports: chunked bodies at the limit ------------------------------------------------------

def _report(version: str = "1") -> dict:
    end = dt.datetime.now(dt.timezone.utc)
    latency = [0] * BUCKET_COUNT
    latency[3] = 100
    return {"id": str(uuid.uuid4()), "model": "digits-cnn", "version": version, "variant": "onnx-fp32",
            "cohort": "stable", "window_start": (end - dt.timedelta(seconds=30)).isoformat(),
            "window_end": end.isoformat(), "inferences": 100, "latency_counts": latency}


def _batch_of_size(report: dict, size: int) -> bytes:
    body = json.dumps({"reports": [report], "padding": ""}).encode()
    data = json.dumps({"reports": [report], "padding": "y" * (size - len(body))}).encode()
    assert len(data) == size
    return data


@pytest.fixture
def device(app, client, tokens) -> str:
    seed_release(app, "1", [variant_entry("onnx-fp32", "onnxruntime", 1.0, "a" * 64)], stable=True)
    return register(client, tokens["enroll"])[1]


def test_a_chunked_report_at_the_limit_is_stored_and_one_byte_more_is_not(app, live_server, device):
    """Counted exactly: a chunked batch of MAX_REPORT_BYTES is fine (it was a 413: werkzeug's
    stream raised on the probe for one more byte), one byte more is a 413 and stores nothing."""
    limit = app.config["MAX_REPORT_BYTES"]
    report = _report()
    status, body = post_chunked(live_server, "/v1/reports", _batch_of_size(report, limit + 1), auth(device))
    assert status == 413 and body["error"] == "payload_too_large", body
    status, body = post_chunked(live_server, "/v1/reports", _batch_of_size(report, limit), auth(device))
    assert status == 200 and body["accepted"] == [report["id"]], body  # not stored by the 413


def test_a_2_mb_chunked_report_is_refused_before_it_is_all_read(live_server, device):
    connection = start(port_of(live_server), "POST", "/v1/reports",
                       {**auth(device), "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    send_quietly(connection, chunk(json.dumps({"reports": [_report()]})[:-1].encode() + b', "pad": "'))
    for _ in range(2 * MB // CHUNK):
        send_quietly(connection, chunk(b"y" * CHUNK))
    status, body, _ = answer(connection)  # no last chunk was sent
    assert status == 413 and body["error"] == "payload_too_large"


# -- other JSON routes: MAX_REQUEST_BYTES ------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/rollouts", "/v1/models/digits-cnn/stable",
                                  "/v1/rollouts/1/pause"])
def test_operator_json_bodies_are_bounded_by_max_request_bytes(app, live_server, tokens, path):
    limit = app.config["MAX_REQUEST_BYTES"]
    body = json.dumps({"name": "x", "pad": "p" * limit}).encode()
    for send in (post_chunked, _post_declared):
        status, answer_ = send(live_server, path, body, auth(tokens["admin"]))
        assert status == 413 and answer_["error"] == "payload_too_large", answer_


# -- publish keeps the release limit, and only publish -----------------------------------------

@pytest.fixture
def publish_app(tmp_path: Path, signing_key: Path):
    return create_app({"DATA_DIR": str(tmp_path / "server"), "CONTROLLER_ENABLED": False,
                       "TRUSTED_KEYS": [str(signing_key.with_suffix(".pub"))], "MAX_RELEASE_BYTES": 500_000})


def _multipart(directory: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    data = json.loads((directory / "manifest.json").read_text())
    names = ["manifest.json", *dict.fromkeys(e["file"] for e in [data["golden"], *data["variants"]])]
    parts = []
    for name in names:
        field = "manifest" if name == "manifest.json" else name
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + (directory / name).read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_only_publish_takes_bodies_up_to_the_release_limit(publish_app, tmp_path, signing_key):
    """A release (~370 kB, over MAX_REQUEST_BYTES) is published, chunked too; over
    MAX_RELEASE_BYTES it is a JSON 413 whether declared or chunked, and nothing is stored."""
    small = make_release(tmp_path / "small", signing_key)
    big = make_release(tmp_path / "big", signing_key, version="2", seed=1)
    (big / "golden.npz").write_bytes(b"g" * 200_000)  # the signature no longer matters: refused first
    admin = auth(_token(publish_app))
    with serving(publish_app) as port:
        body, content_type = _multipart(small)
        assert len(body) > publish_app.config["MAX_REQUEST_BYTES"]
        base = f"http://127.0.0.1:{port}"
        status, answer_ = post_chunked(base, "/v1/releases", body, {**admin, "Content-Type": content_type})
        assert status == 201, answer_
        body, content_type = _multipart(big)
        assert len(body) > publish_app.config["MAX_RELEASE_BYTES"]
        declared = requests.post(f"http://127.0.0.1:{port}/v1/releases", data=body, timeout=30,
                                 headers={**admin, "Content-Type": content_type})
        assert declared.status_code == 413 and declared.json()["error"] == "payload_too_large"
        status, answer_ = post_chunked(base, "/v1/releases", body, {**admin, "Content-Type": content_type})
        assert status == 413 and answer_["error"] == "payload_too_large", answer_
        listed = requests.get(f"http://127.0.0.1:{port}/v1/models/digits-cnn", headers=admin, timeout=30)
        assert [r["version"] for r in listed.json()["releases"]] == ["1"]


def _token(app) -> str:
    text = (Path(app.config["DATA_DIR"]) / "first-start-tokens.txt").read_text()
    return dict(line.split("=", 1) for line in text.split())["EDGESHIP_ADMIN_TOKEN"]


# -- JSON nesting ------------------------------------------------------------------------------

DEEP = b'{"x": ' + b"[" * 1500 + b"]" * 1500 + b"}"


@pytest.mark.parametrize("path, who", [
    ("/v1/devices/register", None),  # the row of the issue: unauthenticated
    ("/v1/reports", "device"), ("/v1/tokens", "admin"), ("/v1/rollouts", "admin"),
    ("/v1/models/digits-cnn/stable", "admin"), ("/v1/rollouts/1/abort", "admin"),
])
def test_json_nested_1500_deep_is_a_400_with_a_reason_and_no_traceback(live_server, tokens, device,
                                                                        caplog, path, who):
    headers = {"device": auth(device), "admin": auth(tokens["admin"]), None: {}}[who]
    with caplog.at_level(logging.ERROR):
        for send in (_post_declared, post_chunked):
            status, body = send(live_server, path, DEEP, headers)
            assert status == 400 and body["error"] == "json_too_deep", body
            assert "32 levels" in body["detail"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_report_batch_hiding_deep_nesting_in_an_unknown_field_is_a_400(live_server, device):
    """The reports' fast path (msgspec) skips unknown fields by recursing: a RecursionError."""
    report = _report()
    body = json.dumps({"reports": [{**report, "extra": "HERE"}]}).encode()
    body = body.replace(b'"HERE"', b"[" * 1500 + b"]" * 1500)
    status, answer_ = _post_declared(live_server, "/v1/reports", body, auth(device))
    assert status == 400 and answer_["error"] == "json_too_deep", answer_
    status, answer_ = _post_declared(live_server, "/v1/reports", json.dumps({"reports": [report]}).encode(),
                                     auth(device))
    assert status == 200 and answer_["accepted"] == [report["id"]]


def test_nesting_up_to_the_bound_is_accepted_and_one_level_more_is_not(live_server, tokens):
    fields = {"enrollment_token": tokens["enroll"], "device_class": "rpi4", "arch": "aarch64",
              "os": "x", "ram_bytes": 1, "runtimes": {}}
    for levels, expected in ((31, 201), (32, 400)):  # + the body's own object
        body = json.dumps({**fields, "extra": "HERE"}).encode().replace(
            b'"HERE"', b"[" * levels + b"]" * levels)
        status, answer_ = _post_declared(live_server, "/v1/devices/register", body, {})
        assert status == expected, answer_


@pytest.mark.parametrize("text, deeper", [
    (b"[" * 32 + b"]" * 32, False),
    (b"[" * 33 + b"]" * 33, True),
    (b'{"a": "' + b"[" * 40 + b'"}', False),  # brackets in strings do not nest
    (b'{"a": "\\"' + b"[" * 40 + b"]" * 40 + b'"}', False),  # nor after an escaped quote
    (b'{"a": "x\\\\", "b": ' + b"[" * 33 + b"]" * 33 + b"}", True),  # an escaped backslash ends no string
    (b"[" + b"[]," * 5000 + b"[]]", False),  # wide, not deep
    (b"]]]]" + b"[" * 40, False),  # not JSON: the parser says so
])
def test_check_json_depth(app, text, deeper):
    with app.app_context():
        if deeper:
            with pytest.raises(ApiError, match="deeper than 32"):
                check_json_depth(text)
        else:
            check_json_depth(text)
