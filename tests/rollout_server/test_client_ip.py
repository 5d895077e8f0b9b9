"""The client's address: the peer, or X-Forwarded-For only behind trusted proxies."""

from __future__ import annotations

import pytest

from rollout_server.client_ip import UNKNOWN, client_address, client_network


@pytest.mark.parametrize(("remote", "forwarded", "trusted", "expected"), [
    ("192.0.2.1", "203.0.113.9", 0, "192.0.2.1"),  # not trusted by default
    ("192.0.2.1", "198.51.100.1, 203.0.113.9", 1, "203.0.113.9"),  # right-most: the proxy's entry
    ("192.0.2.1", "198.51.100.1, 203.0.113.9, 10.0.0.2", 2, "203.0.113.9"),
    ("192.0.2.1", "203.0.113.9", 2, "192.0.2.1"),  # fewer entries than proxies: not through them
    ("192.0.2.1", "", 1, "192.0.2.1"),
    ("192.0.2.1", "not-an-ip", 1, "192.0.2.1"),
    ("192.0.2.1", "203.0.113.9:4711", 1, "203.0.113.9"),
    ("192.0.2.1", "[2001:db8::1]:443", 1, "2001:db8::1"),
    ("::ffff:192.0.2.7", None, 0, "192.0.2.7"),
    ("2001:DB8::0001", None, 0, "2001:db8::1"),
    ("fe80::1%eth0", None, 0, "fe80::1"),
    ("", None, 0, UNKNOWN),
])
def test_client_address(remote, forwarded, trusted, expected):
    environ = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    assert client_address(environ, trusted) == expected


def test_ipv6_clients_are_keyed_by_their_network_and_ipv4_by_address():
    assert client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:2:aaaa::1", 48) == "2001:db8:1::/48"
    assert client_network("2001:db8::1", 128) == "2001:db8::1"
    assert client_network("203.0.113.9") == "203.0.113.9"
    assert client_network(UNKNOWN) == UNKNOWN
