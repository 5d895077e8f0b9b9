"""The device side of the protocol (docs/protocol.md): register, assignment, reports.

Standard library HTTP only, so the agent installs on a Raspberry Pi with nothing to build; every
request goes through a :class:`edge_agent.transport.Transport` (TLS verification and pinning,
plain-HTTP policy, redirects that never carry the credential to another origin).
Errors come in two kinds the loop treats differently: :class:`ServerUnavailable` (network,
timeout, a certificate that does not verify, 5xx, 429, a redirect not followed: retry later with
backoff) and :class:`ServerRejected` (any other 4xx: the request itself is wrong, retrying it
unchanged will not help).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from edge_agent.backoff import retry_after_seconds
from edge_agent.transport import Transport

USER_AGENT = "edgeship-agent/1"
#: the assignment's hint that this device's credential is old enough to rotate (protocol §2.3)
ROTATE_HEADER = "Edgeship-Rotate-Credential"


class ServerError(Exception):
    """Base of the errors talking to the rollout server."""


class ServerUnavailable(ServerError):
    """The server could not be reached or answered 5xx / 429: try again later.

    Attributes:
        retry_after_seconds: the answer's ``Retry-After`` in seconds, if it had one (a 429 of the
            rate limits, a 503 of a busy database): the device waits at least this long.
    """

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ServerRejected(ServerError):
    """The server refused the request (4xx other than 429).

    Attributes:
        status: HTTP status.
        error: the server's short error code (``no_variant``, ``unauthorized``...).
        retry_after_seconds: the answer's ``Retry-After`` in seconds, if it had one (a pending
            device's 403 says when to ask again).
    """

    def __init__(self, message: str, status: int, error: str = "",
                 retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class Registration:
    device_id: str
    credential: str
    pending: bool = False  # the device waits for an operator to accept it


class ServerApi:
    """JSON over HTTP to one rollout server.

    Args:
        base_url: e.g. ``https://rollout.example.com``.
        timeout_seconds: socket timeout of every request.
        transport: how to reach it (default: system CA store, no pin, plain HTTP to loopback only).
    """

    def __init__(self, base_url: str, timeout_seconds: float = 10.0,
                 transport: Transport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.transport = transport or Transport(self.base_url)
        self.credential: str | None = None
        #: the last assignment answer (200 or 304) asked this device to rotate its credential
        self.rotation_requested = False

    def url(self, path: str) -> str:
        """Absolute URL of a server path such as ``/v1/artifacts/<sha>`` (an absolute URL stays as it is)."""
        return urllib.parse.urljoin(self.base_url + "/", path.lstrip("/"))

    def auth_headers(self, url: str | None = None) -> dict[str, str]:
        """The ``Authorization`` header for a request to ``url`` (default: the server): none for
        a URL on another origin, which must never see the device's credential."""
        if not self.credential or (url is not None and not self.transport.same_origin(url)):
            return {}
        return {"Authorization": f"Bearer {self.credential}"}

    def register(self, enrollment_token: str, device: dict[str, Any]) -> Registration:
        """Enroll this device; ``device`` holds device_class, arch, os, ram_bytes, runtimes."""
        _, _, body = self._request("POST", "/v1/devices/register",
                                        {"enrollment_token": enrollment_token, **device}, auth=False)
        return Registration(device_id=str(body["device_id"]), credential=str(body["credential"]),
                            pending=body.get("state") == "pending")

    def rotate_credential(self, device_id: str) -> str:
        """A new credential for this device (the current one stays valid until the new one is used)."""
        _, _, body = self._request("POST", f"/v1/devices/{urllib.parse.quote(device_id)}/credential")
        credential = body.get("credential") if isinstance(body, dict) else None
        if not isinstance(credential, str) or not credential:
            raise ServerUnavailable("credential rotation: the answer holds no credential")
        return credential

    def assignment(self, device_id: str, model: str, etag: str | None, exclude_version: str | None = None,
                   exclude: list[str] | None = None) -> tuple[dict | None, str | None]:
        """The current assignment, or ``(None, etag)`` when unchanged since ``etag`` (304).

        ``exclude`` names variants of release ``exclude_version`` this device refused: the
        server then offers the next-best variant of that release (docs/protocol.md §3.1).
        """
        params: list[tuple[str, str]] = [("model", model)]
        if exclude and exclude_version is not None:
            params += [("exclude_version", exclude_version), *(("exclude", v) for v in exclude)]
        query = urllib.parse.urlencode(params)
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        status, response_headers, body = self._request(
            "GET", f"/v1/devices/{urllib.parse.quote(device_id)}/assignment?{query}", headers=headers)
        new_etag = (response_headers.get("ETag") or "").strip('"') or None
        self.rotation_requested = response_headers.get(ROTATE_HEADER) == "1"
        if status == 304:
            return None, etag
        return body, new_etag

    def update_runtimes(self, device_id: str, runtimes: dict[str, str]) -> None:
        """Tell the server which runtimes this device loads now (they changed since registration)."""
        self._request("PUT", f"/v1/devices/{urllib.parse.quote(device_id)}/runtimes", {"runtimes": runtimes})

    def update_attributes(self, device_id: str, attributes: dict[str, str]) -> None:
        """Replace what the server holds of this device's attributes (``{}`` clears them)."""
        self._request("PUT", f"/v1/devices/{urllib.parse.quote(device_id)}/attributes",
                      {"attributes": attributes})

    def post_reports(self, reports: list[dict[str, Any]]) -> set[str]:
        """Send a batch; returns the ids the server now holds (accepted now or before)."""
        _, _, body = self._request("POST", "/v1/reports", {"reports": reports})
        return set(body.get("accepted", [])) | set(body.get("duplicates", []))

    def _request(self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None,
                 auth: bool = True) -> tuple[int, Any, Any]:
        data = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        url = self.url(path)
        if auth:
            all_headers.update(self.auth_headers(url))
        request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with self.transport.open(request, timeout=self.timeout_seconds) as response:
                raw = response.read()
                return response.status, response.headers, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as err:
            if err.code == 304:
                return 304, err.headers, None
            detail, code = _error_detail(err)
            message = f"{method} {path}: HTTP {err.code}: {detail}"
            retry_after = retry_after_seconds((err.headers or {}).get("Retry-After"))
            if err.code >= 500 or err.code == 429 or 300 <= err.code < 400:  # 3xx: a redirect not followed
                raise ServerUnavailable(message, retry_after) from None
            raise ServerRejected(message, err.code, code, retry_after) from None
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise ServerUnavailable(f"{method} {self.base_url}{path}: {reason}") from None
        except ValueError as err:  # a body that is not JSON: a proxy's error page, say
            raise ServerUnavailable(f"{method} {path}: answer is not JSON ({err})") from None


def _error_detail(err: urllib.error.HTTPError) -> tuple[str, str]:
    try:
        body = json.loads(err.read() or b"{}")
        return str(body.get("detail") or body.get("error") or err.reason), str(body.get("error", ""))
    except (ValueError, OSError):
        return str(err.reason), ""
