"""Loopback only: the simulator refuses any server that is not on this machine.

Usage::

    target = loopback_target("http://127.0.0.1:8080")   # Target(address="127.0.0.1", port=8080, ...)
    loopback_target("http://10.0.0.1:8080")             # NotLoopbackError, nothing looked up or sent

IP literals are checked as they are. ``localhost`` and ``*.localhost`` (reserved for loopback,
RFC 6761) are resolved from the local resolver and every address must be loopback. Any other
name is refused *without* resolving it: a DNS lookup would itself be traffic off the machine,
and an answer could change between the check and the connection. The checked address is the
one connected to (the name only goes into the ``Host`` header), so nothing can re-resolve it
elsewhere later.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass

from rollout_server.simulator.errors import NotLoopbackError

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Target:
    """A checked server: where to connect and what to call it.

    Attributes:
        url: the base URL as given, without a trailing slash.
        address: the loopback IP address connections go to.
        port: TCP port.
        host_header: the ``Host`` header (the name and port of ``url``).
        base_path: path prefix before ``/v1/...`` ('' for a server at the root).
    """

    url: str
    address: str
    port: int
    host_header: str
    base_path: str


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped 127.x addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def loopback_target(url: str) -> Target:
    """Check ``url`` and pin it to a loopback address.

    Args:
        url: ``http://HOST[:PORT][/prefix]``; HOST an IP literal, ``localhost`` or ``*.localhost``.

    Returns:
        The target to connect to.

    Raises:
        NotLoopbackError: not plain HTTP, or the host is (or may be) off this machine.
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme != "http":
        raise NotLoopbackError(
            f"server {url!r}: only http:// URLs on loopback are simulated against (got scheme "
            f"{parts.scheme or 'none'!r})")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise NotLoopbackError(f"server {url!r}: no credentials, query or fragment in the URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise NotLoopbackError(f"server {url!r}: no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise NotLoopbackError(f"server {url!r}: bad port") from None
    address = _pinned_address(host, port, url)
    netloc = f"[{host}]" if ":" in host else host
    return Target(url=url.strip().rstrip("/"), address=address, port=port,
                  host_header=f"{netloc}:{port}", base_path=parts.path.rstrip("/"))


def _pinned_address(host: str, port: int, url: str) -> str:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not is_loopback(host):
            raise NotLoopbackError(
                f"server {url!r}: {host} is not a loopback address (127.0.0.0/8 or ::1); the "
                "simulator only loads servers on this machine")
        return str(literal)
    if host not in LOOPBACK_NAMES and not host.endswith(".localhost"):
        raise NotLoopbackError(
            f"server {url!r}: refusing host name {host!r} without resolving it; the simulator only "
            "loads servers on this machine: use 127.0.0.1, [::1] or localhost")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise NotLoopbackError(f"server {url!r}: cannot resolve {host!r} locally: {err}") from None
    addresses = sorted({info[4][0] for info in infos}, key=lambda a: (":" in a, a))  # IPv4 first
    outside = [a for a in addresses if not is_loopback(a)]
    if not addresses or outside:
        raise NotLoopbackError(f"server {url!r}: {host!r} resolves to non-loopback {outside or 'nothing'}")
    return addresses[0]
