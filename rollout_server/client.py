"""A small HTTP client for the rollout server (used by the ``edgeship`` CLI).

Light on purpose: ``requests`` and the standard library, imported only when a command runs.
Errors carry the server's JSON reason::

    >>> client = ServerClient("http://127.0.0.1:8080", token)
    >>> client.publish("release/")["variants"][0]["id"]
    'onnx-fp32'
    >>> client.get("/v1/models/nope")
    Traceback (most recent call last):
    ClientError: no model 'nope'
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from edgeship.contract.errors import EdgeshipError
from edgeship.contract.secret_files import read_secret_file

MANIFEST_FILE = "manifest.json"
ENV_TOKEN = "EDGESHIP_TOKEN"
ENV_ENROLL_TOKEN = "EDGESHIP_ENROLL_TOKEN"
ENV_SERVER = "EDGESHIP_SERVER"


class ClientError(EdgeshipError):
    """The server refused a request, or could not be reached (``status`` 0).

    Attributes:
        status: the HTTP status (0 when there was no response).
        error: the server's short error code (``bad_signature``, ``conflict``, ...).
        detail: the server's one-line reason; also ``str(err)``.
    """

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class ServerClient:
    """Bearer-token JSON client for one server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080`` (a trailing slash is fine).
        token: an operator token (``None`` for unauthenticated endpoints).
        timeout: seconds to connect and between bytes read.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 300.0) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` and return its JSON body. Raises :class:`ClientError` for a 4xx/5xx."""
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON ``body`` to ``path`` and return the JSON answer."""
        return self.request("POST", path, json=body)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; the JSON answer, or :class:`ClientError` with the server's reason."""
        import requests

        url = f"{self.base_url}/{path.lstrip('/')}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as err:
            raise ClientError(0, "connection_error", f"cannot reach {self.base_url}: {err}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            if isinstance(body, dict) and "detail" in body:
                raise ClientError(response.status_code, str(body.get("error", "error")), str(body["detail"]))
            raise ClientError(response.status_code, "http_error",
                              f"HTTP {response.status_code} from {url}: {response.text[:200].strip()}")
        return body

    def publish(self, release_dir: Path | str) -> dict[str, Any]:
        """Upload a release directory: its ``manifest.json`` and every file it lists.

        Files are streamed from disk (the body is never held in memory whole).

        Returns:
            The server's answer: ``model``, ``version``, ``variants``, ``created`` (False when the
            identical release was already there).

        Raises:
            ClientError: the directory is not a release (``status`` 0) or the server refused it.
        """
        files = release_files(Path(release_dir))
        body = MultipartBody(files)
        headers = {"Content-Type": body.content_type, "Content-Length": str(len(body))}
        try:
            return self.request("POST", "/v1/releases", data=body, headers=headers)
        finally:
            body.close()


def release_files(directory: Path) -> list[tuple[str, Path]]:
    """``(part name, path)`` for the manifest and each file it lists (variants, golden set, the
    report's figures).

    Raises:
        ClientError: no readable manifest, or a listed file is missing or not a plain name.
    """
    manifest = directory / MANIFEST_FILE
    try:
        data = json.loads(manifest.read_text())
        entries = [data["golden"], *data["variants"], *data.get("figures", [])]
        names = list(dict.fromkeys(entry["file"] for entry in entries))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClientError(0, "bad_release", f"{directory} is not a release directory: {err}") from None
    parts = [("manifest", manifest)]
    for name in names:
        if not isinstance(name, str) or not name or Path(name).name != name or name in {".", ".."}:
            raise ClientError(0, "bad_release", f"manifest lists {name!r}, which is not a plain file name")
        path = directory / name
        if not path.is_file():
            raise ClientError(0, "bad_release", f"{path} is listed in the manifest but missing")
        parts.append((name, path))
    return parts


class MultipartBody:
    """A ``multipart/form-data`` body read from files on demand, with a known length.

    ``requests`` sends any object with ``read`` and ``__len__`` as a streamed body with a
    ``Content-Length``; its own ``files=`` encoder would read every artifact into memory.
    """

    def __init__(self, files: list[tuple[str, Path]]) -> None:
        self.boundary = f"edgeship-{uuid.uuid4().hex}"
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._segments: list[bytes | Path] = []
        for name, path in files:
            self._segments.append(
                f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{_quote(name)}\"; "
                f"filename=\"{_quote(path.name)}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                .encode()
            )
            self._segments += [path, b"\r\n"]
        self._segments.append(f"--{self.boundary}--\r\n".encode())
        self._length = sum(len(s) if isinstance(s, bytes) else s.stat().st_size for s in self._segments)
        self._index = 0
        self._open: BinaryIO | None = None

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (everything left when ``size`` < 0)."""
        chunks: list[bytes] = []
        wanted = size if size >= 0 else float("inf")
        while wanted > 0 and self._index < len(self._segments):
            chunk = self._read_segment(int(min(wanted, 1 << 20)))
            if not chunk:
                self._next_segment()
                continue
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def _read_segment(self, size: int) -> bytes:
        segment = self._segments[self._index]
        if isinstance(segment, bytes):
            self._segments[self._index] = segment[size:]
            return segment[:size]
        if self._open is None:
            self._open = open(segment, "rb")  # noqa: SIM115 (closed by _next_segment / close)
        return self._open.read(size)

    def _next_segment(self) -> None:
        self.close()
        self._index += 1


def _quote(value: str) -> str:
    """Header-safe quoting of a part or file name (the server refuses odd names anyway)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def default_token(flag: str | None, file: str | Path | None = None, env: str = ENV_TOKEN) -> str | None:
    """``--token``, else the token in ``--token-file`` (a warning on stderr if others may read
    it), else ``$EDGESHIP_TOKEN`` (``env``)."""
    if flag:
        return flag
    if file:
        return read_secret_file(file, warn=lambda line: print(f"edgeship: warning: {line}", file=sys.stderr))
    return os.environ.get(env) or None
