"""Which URLs a webhook may POST to: http(s) only, no credentials in the URL, and, when the
``WEBHOOK_ALLOWED_HOSTS`` setting lists any, only those hosts (the way to keep an admin token from
turning the server into a probe of the internal network)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048


def check_url(url: str, allowed_hosts: Sequence[str] = ()) -> str:
    """``url`` if the server may POST to it; ValueError saying why not.

    ``allowed_hosts``: exact host names, or ``.example.com`` for that domain's subdomains; empty
    allows any host.
    """
    if not url or len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the url must be 1 to {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("the url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"the url is malformed ({err})") from None
    if not url.startswith(("http://", "https://")):  # lowercase, as the OpenAPI pattern says
        raise ValueError("the url must be http:// or https://")
    if not parts.hostname:
        raise ValueError("the url has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the url must not carry credentials (user:password@); the payload is signed")
    if port == 0:
        raise ValueError("the url's port must be 1 to 65535")
    if allowed_hosts and not host_allowed(parts.hostname, allowed_hosts):
        raise ValueError(f"host {parts.hostname!r} is not in WEBHOOK_ALLOWED_HOSTS")
    return url


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed_hosts:
        entry = entry.lower().rstrip(".")
        if entry.startswith("."):
            if host.endswith(entry):
                return True
        elif host == entry:
            return True
    return False
