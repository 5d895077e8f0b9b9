"""Redirects never carry the device's credential to another origin (issue 19).

Two (or three) real local HTTP servers: the "server" answers with a redirect, the other one
records the headers it was sent. Different ports on 127.0.0.1 are different origins, and so
are ``localhost`` and ``127.0.0.1``.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from edge_agent.agent import Agent
from edge_agent.download import DownloadError, TransferError, fetch, partial_path
from edge_agent.server_api import ServerApi, ServerUnavailable
from tests.edge_agent.conftest import MODEL, wait_until
from tests.edge_agent.nettools import Front, Seen, Stub, forward, json_reply, make_pki, redirect

CREDENTIAL = "es_device-credential-for-the-redirect-tests"
BLOB = random.Random(19).randbytes(50_000)
SHA = hashlib.sha256(BLOB).hexdigest()
ASSIGNMENT = {"model": MODEL, "version": "1"}


def api(base: str) -> ServerApi:
    client = ServerApi(base, timeout_seconds=5)
    client.credential = CREDENTIAL
    return client


def blob_reply(seen: Seen) -> tuple[int, dict[str, str], bytes]:
    """The artifact, honouring ``Range: bytes=N-`` like the rollout server."""
    asked = seen.header("Range")
    if asked:
        start = int(asked.removeprefix("bytes=").split("-")[0])
        return 206, {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}, BLOB[start:]
    return 200, {}, BLOB


# -- assignment, reports, artifacts: cross-origin redirects drop Authorization -------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_cross_origin_redirect_of_the_assignment_does_not_carry_the_credential(status):
    with Stub(lambda seen: json_reply(200, ASSIGNMENT, {"ETag": '"abc"'})) as other, \
            Stub(lambda seen: redirect(other.url + seen.path, status)) as server:
        body, etag = api(server.url).assignment("dev-1", MODEL, None)
    assert body == ASSIGNMENT and etag == "abc"
    assert server.seen[0].header("Authorization") == f"Bearer {CREDENTIAL}"
    assert [s.header("Authorization") for s in other.seen] == [None]
    assert other.seen[0].header("User-Agent") == "edgeship-agent/1"  # the other headers do go along


def test_localhost_and_127_0_0_1_are_different_origins():
    with Stub(lambda seen: json_reply(200, ASSIGNMENT), host="127.0.0.1") as other:
        moved = other.url.replace("127.0.0.1", "localhost")
        with Stub(lambda seen: redirect(moved + seen.path)) as server:
            api(server.url).assignment("dev-1", MODEL, None)
    assert other.seen and other.seen[0].header("Authorization") is None


def test_a_same_origin_redirect_keeps_the_credential():
    def respond(seen: Seen):
        if seen.path.startswith("/old/"):
            return redirect(seen.path.removeprefix("/old"), 308)
        return json_reply(200, ASSIGNMENT)

    with Stub(respond) as server:
        api(server.url + "/old").assignment("dev-1", MODEL, None)
    assert [s.path.split("?")[0] for s in server.seen] == ["/old/v1/devices/dev-1/assignment",
                                                           "/v1/devices/dev-1/assignment"]
    assert [s.header("Authorization") for s in server.seen] == [f"Bearer {CREDENTIAL}"] * 2


@pytest.mark.parametrize("status", [307, 308])
def test_reports_follow_a_307_or_308_within_the_origin_with_body_and_credential(status):
    reports = [{"id": "r1"}, {"id": "r2"}]

    def respond(seen: Seen):
        if seen.path.startswith("/old/"):
            return redirect(seen.path.removeprefix("/old"), status)
        return json_reply(200, {"accepted": ["r1", "r2"], "duplicates": []})

    with Stub(respond) as server:
        held = api(server.url + "/old").post_reports(reports)
    assert held == {"r1", "r2"}
    assert [s.method for s in server.seen] == ["POST", "POST"]
    assert json.loads(server.seen[1].body) == {"reports": reports}
    assert server.seen[1].header("Authorization") == f"Bearer {CREDENTIAL}"


@pytest.mark.parametrize("status", [307, 308])
def test_a_post_is_not_sent_on_to_another_origin(status):
    """Registration carries the enrollment token in its body: a 307/308 elsewhere is refused
    (and reports, which would be refused there without a credential anyway, stay queued)."""
    with Stub(lambda seen: json_reply(201, {"device_id": "x", "credential": "y"})) as other, \
            Stub(lambda seen: redirect(other.url + seen.path, status)) as server:
        client = api(server.url)
        with pytest.raises(ServerUnavailable, match="not sent on to another origin"):
            client.register("es_enrollment-token", {"device_class": "rpi4"})
        with pytest.raises(ServerUnavailable, match="not sent on to another origin"):
            client.post_reports([{"id": "r1"}])
    assert other.seen == []
    assert "es_enrollment-token" in server.seen[0].body.decode()  # it did go to the server itself


@pytest.mark.parametrize("status", [301, 302, 303])
def test_reports_answered_with_a_redirect_that_would_drop_the_body_stay_undelivered(status):
    """urllib would turn the POST into a GET without body (-> 405 -> the reports dropped as
    malformed); the agent does not follow, and the reports stay in its outbox for later."""
    def respond(seen: Seen):
        if seen.path.startswith("/moved/"):
            return json_reply(405, {"error": "method_not_allowed"})
        return redirect("/moved" + seen.path, status)

    with Stub(respond) as server, pytest.raises(ServerUnavailable, match="would lose the body"):
        api(server.url).post_reports([{"id": "r1"}])
    assert [s.path for s in server.seen] == ["/v1/reports"]


def test_an_artifact_redirected_to_another_origin_downloads_without_the_credential(tmp_path):
    """A presigned download URL: followed, Range kept (resume works), Authorization not sent."""
    with Stub(blob_reply) as storage, \
            Stub(lambda seen: redirect(f"{storage.url}/bucket/{SHA}?X-Signature=abc")) as server:
        dest = tmp_path / "blob"
        partial_path(dest).write_bytes(BLOB[:12_345])
        fetch(f"{server.url}/v1/artifacts/{SHA}", dest, SHA, len(BLOB),
              headers={"Authorization": f"Bearer {CREDENTIAL}"})
    assert dest.read_bytes() == BLOB
    assert server.seen[0].header("Authorization") == f"Bearer {CREDENTIAL}"
    assert storage.seen[0].path == f"/bucket/{SHA}?X-Signature=abc"
    assert storage.seen[0].header("Authorization") is None
    assert storage.seen[0].header("Range") == "bytes=12345-"


def test_an_artifact_redirected_within_the_origin_keeps_the_credential(tmp_path):
    def respond(seen: Seen):
        if seen.path.startswith("/v1/artifacts/"):
            return redirect(f"/blobs/{SHA}", 307)
        return blob_reply(seen)

    with Stub(respond) as server:
        fetch(f"{server.url}/v1/artifacts/{SHA}", tmp_path / "blob", SHA, len(BLOB),
              headers={"Authorization": f"Bearer {CREDENTIAL}"})
    assert [s.header("Authorization") for s in server.seen] == [f"Bearer {CREDENTIAL}"] * 2


# -- never downgrade, never to a scheme other than http(s), never plain HTTP off this machine ----


def test_https_to_http_is_never_followed(tmp_path):
    pki = make_pki(tmp_path / "pki")
    with Stub(lambda seen: json_reply(200, ASSIGNMENT)) as plain, \
            Stub(lambda seen: redirect(plain.url + seen.path), context=pki.server_context()) as server:
        from edge_agent.transport import Transport

        client = ServerApi(server.url, 5, transport=Transport(server.url, ca_file=pki.ca_file))
        client.credential = CREDENTIAL
        with pytest.raises(ServerUnavailable, match="https to http"):
            client.assignment("dev-1", MODEL, None)
        with pytest.raises(TransferError, match="https to http"):
            fetch(f"{server.url}/v1/artifacts/{SHA}", tmp_path / "blob", SHA, len(BLOB),
                  headers=client.auth_headers(), transport=client.transport)
    assert plain.seen == [] and len(server.seen) == 2


@pytest.mark.parametrize("location", ["http://192.0.2.10/v1/x", "file:///etc/passwd", "ftp://127.0.0.1/x"])
def test_a_redirect_to_plain_http_off_this_machine_or_another_scheme_is_refused(location, tmp_path):
    """192.0.2.10 is TEST-NET-1: the refusal comes before any connection is attempted."""
    with Stub(lambda seen: redirect(location)) as server:
        with pytest.raises(ServerUnavailable, match="redirect"):
            api(server.url).assignment("dev-1", MODEL, None)
        with pytest.raises(DownloadError, match="redirect"):
            fetch(f"{server.url}/v1/artifacts/{SHA}", tmp_path / "blob", SHA, len(BLOB),
                  headers={"Authorization": f"Bearer {CREDENTIAL}"}, timeout_seconds=2)


def test_an_assignment_naming_an_absolute_artifact_url_elsewhere_gets_no_credential(tmp_path):
    """The sibling of the redirect: ``artifact_url`` is a path today, but an absolute URL on
    another origin (a presigned one) is fetched without the device's credential."""
    with Stub(blob_reply) as storage, Stub(lambda seen: json_reply(404, {})) as server:
        client = api(server.url)
        elsewhere = f"{storage.url}/bucket/{SHA}"
        assert client.url(elsewhere) == elsewhere
        assert client.auth_headers(elsewhere) == {}
        assert client.auth_headers(client.url(f"/v1/artifacts/{SHA}")) == {
            "Authorization": f"Bearer {CREDENTIAL}"}
        fetch(elsewhere, tmp_path / "blob", SHA, len(BLOB), headers=client.auth_headers(elsewhere),
              transport=client.transport)
    assert storage.seen[0].header("Authorization") is None


# -- the whole agent, real rollout server, artifacts served from "object storage" ----------------


def test_the_agent_installs_through_presigned_redirects_without_leaking_its_credential(
        server, agent_config):
    """A front on 127.0.0.1 passes the API through to the real server and answers every artifact
    request with a redirect to a "storage" server on another origin (localhost), which fetches
    the file from the real server with its own (operator) token, as a bucket would hold it."""

    def from_bucket(seen: Seen):
        sha = seen.path.split("?")[0].rsplit("/", 1)[-1]
        wanted = {k: v for k, v in seen.headers.items() if k.lower() == "range"}
        return forward(server.url, Seen("GET", f"/v1/artifacts/{sha}", wanted, b""),
                       headers={"Authorization": f"Bearer {server.admin}"})

    with Stub(from_bucket) as storage:
        storage_url = storage.url.replace("127.0.0.1", "localhost")

        def intercept(seen: Seen):
            if seen.path.startswith("/v1/artifacts/"):
                return redirect(f"{storage_url}/bucket/{seen.path.rsplit('/', 1)[-1]}?sig=1", 307)
            return None

        with Front(server.url, intercept=intercept) as front:
            config = agent_config(server=front.url)
            agent = Agent(config).start()
            try:
                wait_until(lambda: agent.current is not None and agent.current.version == "1",
                           what="v1 installed through the redirect")
            finally:
                agent.stop()
    credential = json.loads((config.state_dir / "identity.json").read_text())["credential"]
    artifact_requests = [s for s in front.seen if s.path.startswith("/v1/artifacts/")]
    assert artifact_requests
    assert all(s.header("Authorization") == f"Bearer {credential}" for s in artifact_requests)
    assert len(storage.seen) >= 2  # the model file and the golden file
    assert all(credential not in json.dumps(s.headers) for s in storage.seen)
    assert all(s.header("Authorization") is None for s in storage.seen)
