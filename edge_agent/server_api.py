"""The device side of the protocol (docs/rollout-server.md): register, assignment, reports.

Standard library HTTP only, so the agent installs on a Raspberry Pi with nothing to build.
Errors come in two kinds the loop treats differently: :class:`ServerUnavailable` (network,
timeout, 5xx, 429: retry later with backoff) and :class:`ServerRejected` (any other 4xx: the
request itself is wrong, retrying it unchanged will not help).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

USER_AGENT = "edgeship-agent/1"


class ServerError(Exception):
    """Base of the errors talking to the rollout server."""


class ServerUnavailable(ServerError):
    """The server could not be reached or answered 5xx / 429: try again later."""


class ServerRejected(ServerError):
    """The server refused the request (4xx other than 429).

    Attributes:
        status: HTTP status.
        error: the server's short error code (``no_variant``, ``unauthorized``...).
    """

    def __init__(self, message: str, status: int, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Registration:
    device_id: str
    credential: str


class ServerApi:
    """JSON over HTTP to one rollout server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        timeout_seconds: socket timeout of every request.
    """

    def __init__(self, base_url: str, timeout_seconds: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.credential: str | None = None

    def url(self, path: str) -> str:
        """Absolute URL of a server path such as ``/v1/artifacts/<sha>``."""
        return urllib.parse.urljoin(self.base_url + "/", path.lstrip("/"))

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"} if self.credential else {}

    def register(self, enrollment_token: str, device: dict[str, Any]) -> Registration:
        """Enroll this device; ``device`` holds device_class, arch, os, ram_bytes, runtimes."""
        _, _, body = self._request("POST", "/v1/devices/register",
                                        {"enrollment_token": enrollment_token, **device}, auth=False)
        return Registration(device_id=str(body["device_id"]), credential=str(body["credential"]))

    def assignment(self, device_id: str, model: str, etag: str | None) -> tuple[dict | None, str | None]:
        """The current assignment, or ``(None, etag)`` when unchanged since ``etag`` (304)."""
        query = urllib.parse.urlencode({"model": model})
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        status, response_headers, body = self._request(
            "GET", f"/v1/devices/{urllib.parse.quote(device_id)}/assignment?{query}", headers=headers)
        new_etag = (response_headers.get("ETag") or "").strip('"') or None
        if status == 304:
            return None, etag
        return body, new_etag

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
        if auth:
            all_headers.update(self.auth_headers())
        request = urllib.request.Request(self.url(path), data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                raw = response.read()
                return response.status, response.headers, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as err:
            if err.code == 304:
                return 304, err.headers, None
            detail, code = _error_detail(err)
            message = f"{method} {path}: HTTP {err.code}: {detail}"
            if err.code >= 500 or err.code == 429:
                raise ServerUnavailable(message) from None
            raise ServerRejected(message, err.code, code) from None
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
