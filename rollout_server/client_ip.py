"""Who is asking: the client's address for a request, and the network a limit counts it under.

``X-Forwarded-For`` is whatever the client wrote, with each proxy on the way appending the
address it saw, so only the entries our own proxies appended are facts. Behind
``TRUSTED_PROXY_COUNT`` proxies the client is the ``count``-th entry from the right (werkzeug's
``ProxyFix(x_for=count)``); by default (0) the header is ignored and the peer address
(``REMOTE_ADDR``) is the client. A count larger than the real number of proxies lets clients
choose their own address: set it to exactly the proxies in front of the server.

IPv6 clients are counted per network (``/64`` by default): one host routinely holds a whole /64
and may pick a new address per request, while an IPv4 client has one address (or a NAT).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

#: the key of a client whose address is missing or not an IP (a UNIX socket, a broken proxy).
UNKNOWN = "unknown"


def client_address(environ: Mapping[str, Any], trusted_proxies: int = 0) -> str:
    """The client's IP address of a WSGI request, normalized (``UNKNOWN`` if there is none).

    Args:
        environ: the WSGI environ (``REMOTE_ADDR``, ``HTTP_X_FORWARDED_FOR``).
        trusted_proxies: how many proxies in front of the server append to ``X-Forwarded-For``;
            0 ignores the header.

    Returns:
        The right-most untrusted ``X-Forwarded-For`` entry when the header has at least
        ``trusted_proxies`` entries and it is an IP address, else ``REMOTE_ADDR``.
    """
    if trusted_proxies > 0:
        entries = [e.strip() for e in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
        entries = [e for e in entries if e]
        if len(entries) >= trusted_proxies:
            forwarded = _normalized(entries[-trusted_proxies])
            if forwarded is not None:
                return forwarded
    return _normalized(str(environ.get("REMOTE_ADDR") or "")) or UNKNOWN


def client_network(address: str, ipv6_prefix: int = 64) -> str:
    """The key a per-client limit counts ``address`` under: an IPv4 address itself, an IPv6
    address's ``/ipv6_prefix`` network (``2001:db8:1:2::/64``)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return UNKNOWN
    if ip.version == 4 or ipv6_prefix >= 128:
        return str(ip)
    host_bits = 128 - ipv6_prefix
    return f"{ipaddress.IPv6Address(int(ip) >> host_bits << host_bits)}/{ipv6_prefix}"


def _normalized(text: str) -> str | None:
    """``text`` as an IP address in its canonical spelling (an IPv4-mapped IPv6 address as the
    IPv4 address; a port, as some proxies append, and a zone index dropped), or None if it is
    not one."""
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # 192.0.2.1:443
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
