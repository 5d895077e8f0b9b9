"""The agent honours the server's Retry-After: never sooner, spread so a fleet does not return at once."""

from __future__ import annotations

import pytest

from edge_agent.backoff import MAX_RETRY_AFTER_SECONDS, Backoff, retry_after_seconds


@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 480.0),  # an HTTP-date, 8 minutes after "now"
    ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: at once
    ("99999999", MAX_RETRY_AFTER_SECONDS),
    ("-5", None), ("soon", None), ("", None), (None, None),
])
def test_retry_after_is_read_as_seconds_or_a_date(header, expected):
    assert retry_after_seconds(header, now=1445412000.0) == expected  # 2015-10-21 07:20:00 UTC


def test_a_failure_with_retry_after_waits_at_least_that_and_spreads_over_half_more():
    low, high = Backoff(1.0, 300.0, rng=lambda: 0.0), Backoff(1.0, 300.0, rng=lambda: 1.0)
    assert low.failure(at_least=300.0) == 300.0 and high.failure(at_least=300.0) == 450.0
    assert low.failure(at_least=0.1) == 1.0  # the exponential backoff when it is the longer
    assert [Backoff(1.0, 8.0, rng=lambda: 1.0).failure(at_least=None) for _ in range(2)] == [1.0, 1.0]


@pytest.mark.parametrize("status", [429, 503])
def test_the_request_layer_hands_the_servers_retry_after_to_the_backoff(status):
    """Over real HTTP: a 429 (rate limits) or 503 (busy database) with ``Retry-After: 120`` is a
    ServerUnavailable carrying 120 s, which the agent's backoff never undercuts."""
    import http.server
    import threading

    from edge_agent.server_api import ServerApi, ServerUnavailable

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"error": "rate_limited", "detail": "too many"}'
            self.send_response(status)
            self.send_header("Retry-After", "120")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = ServerApi(f"http://127.0.0.1:{server.server_address[1]}")
        api.credential = "es_x"
        with pytest.raises(ServerUnavailable) as refused:
            api.assignment("d", "m", None)
    finally:
        server.shutdown()
        server.server_close()
    assert refused.value.retry_after_seconds == 120.0
    wait = Backoff(1.0, 30.0, rng=lambda: 0.0).failure(at_least=refused.value.retry_after_seconds)
    assert wait >= 120.0
