"""Request bodies and streamed answers through the real ``edgeship server``: limits enforced
before and while the body arrives (413, then the connection closes), a large upload received
only for a request the app accepts, a release over 1 MiB (spooled to disk) published whole, and
artifacts streamed back with Range."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

from benchmarks.server_setup import make_release
from edgeship.contract.signing import generate_keypair, load_private_key, sign_manifest
from rollout_server.client import ServerClient
from tests.rollout_server.served import Served, closed_by_server, edgeship_server, read_answer

REGISTER_LIMIT = 16 * 1024  # MAX_REGISTER_BYTES
BIG_FILE = "model-fp32.onnx"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"), "publisher")


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> Served:
    with edgeship_server(tmp_path_factory.mktemp("bodies"), "--trusted-key", str(keys[1])) as served:
        yield served


@pytest.fixture(scope="module")
def big_release(tmp_path_factory, keys) -> Path:
    """The benchmark's signed release with one variant grown to 3 MiB (past what stays in memory)."""
    directory = make_release(tmp_path_factory.mktemp("release"), keys[0])
    blob = os.urandom(3 * 1024 * 1024 + 17)
    (directory / BIG_FILE).write_bytes(blob)
    manifest = json.loads((directory / "manifest.json").read_text())
    variant = next(v for v in manifest["variants"] if v["file"] == BIG_FILE)
    variant.update(sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))
    (directory / "manifest.json").write_text(json.dumps(sign_manifest(manifest, load_private_key(keys[0]))))
    return directory


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def post_head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_chunked_body_one_byte_over_the_limit_is_413_and_the_connection_closes(server: Served):
    with server.raw_socket() as sock:
        sock.sendall(post_head("/v1/devices/register", "Transfer-Encoding: chunked"))
        for _ in range(REGISTER_LIMIT // 1024):
            sock.sendall(chunk(b" " * 1024))
        sock.sendall(chunk(b" "))  # byte limit + 1; the body's end never comes
        status, headers, body = read_answer(sock)
        assert (status, headers["connection"]) == (413, "close")
        assert json.loads(body)["error"] == "payload_too_large"
        assert closed_by_server(sock)


def test_a_chunked_body_at_the_limit_reaches_the_app(server: Served):
    payload = b"{" + b" " * (REGISTER_LIMIT - 2) + b"}"
    with server.raw_socket() as sock:
        sock.sendall(post_head("/v1/devices/register", "Transfer-Encoding: chunked") + chunk(payload[:9000])
                     + chunk(payload[9000:]) + b"0\r\n\r\n")
        status, _, body = read_answer(sock)
    assert status == 400, body  # the app read it: not a registration, but not too large either


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server: Served):
    with server.raw_socket() as sock:
        sock.sendall(post_head("/v1/devices/register", f"Content-Length: {200 * 1024 * 1024}"))
        status, headers, body = read_answer(sock)  # no byte of the body was sent
        assert (status, headers["connection"]) == (413, "close") and b"16384 bytes" in body
        assert closed_by_server(sock)


@pytest.mark.parametrize("framing", ["Content-Length: 1073741824", "Transfer-Encoding: chunked"])
def test_an_unauthenticated_upload_is_refused_before_its_body_arrives(server: Served, framing):
    """A 1 GiB publish without a token: answered 401 on its headers alone, and closed, instead
    of being received (to disk) first."""
    head = post_head("/v1/releases", framing).replace(b"application/json", b"multipart/form-data; boundary=x")
    with server.raw_socket() as sock:
        sock.sendall(head)
        status, headers, body = read_answer(sock)
        assert (status, headers["connection"]) == (401, "close"), body
        assert closed_by_server(sock)


def test_a_release_past_memory_is_published_and_streamed_back_with_range(server: Served, big_release):
    admin = server.tokens()["EDGESHIP_ADMIN_TOKEN"]
    published = ServerClient(server.url, admin).publish(big_release)
    assert published["created"] is True
    blob = (big_release / BIG_FILE).read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    auth = {"Authorization": f"Bearer {admin}"}

    status, headers, body = server.get(f"/v1/artifacts/{sha}", auth)
    assert (status, int(headers["content-length"])) == (200, len(blob)) and body == blob
    status, headers, body = server.get(f"/v1/artifacts/{sha}", {**auth, "Range": "bytes=1000000-2999999"})
    assert (status, headers["content-range"]) == (206, f"bytes 1000000-2999999/{len(blob)}")
    assert body == blob[1_000_000:3_000_000]
    status, _, body = server.get(f"/v1/artifacts/{sha}", {**auth, "Range": "bytes=-100"})
    assert (status, body) == (206, blob[-100:])
    status, headers, _ = server.get(f"/v1/artifacts/{sha}", {**auth, "Range": f"bytes={len(blob)}-"})
    assert (status, headers["content-range"]) == (416, f"bytes */{len(blob)}")
    assert server.get(f"/v1/artifacts/{sha}", {**auth, "If-None-Match": f'"{sha}"'})[0] == 304
