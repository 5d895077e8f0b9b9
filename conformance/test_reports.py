"""Reports (protocol §8, §9): every report reaches the server exactly once, across an answer
lost after the server stored it, a server outage and a crash; windows follow the server's
``report_interval_seconds``."""

from __future__ import annotations

import time

from conformance.kit import Kit
from conformance.proxy import Fault
from conformance.server import REPORT_INTERVAL_SECONDS

FEED_SECONDS = 4.5


def test_delivers_every_report_exactly_once_across_a_lost_answer_an_outage_and_a_crash(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    kit.feed(device, 10)
    lost = kit.proxy.arm(Fault.drop_answer("POST", "/v1/reports"))
    device.close_window()
    device.deliver()  # stored by the server, the answer never arrives: the device must send it again
    assert lost.served.wait(30), "the device did not deliver its reports"

    kit.server.stop()  # an outage: the proxy answers 502
    try:
        kit.feed(device, 5, first=10)
        device.close_window()
        assert not device.deliver(), "nothing can be delivered while the server is away"
        device.kill()  # a crash with reports queued
    finally:
        kit.server.start()
    device.start()
    assert device.deliver()
    assert device.stop()["outbox"] == 0

    rows = kit.reports(device_id)
    assert sum(r["inferences"] for r in rows) == 15, "each inference counted once: none lost, none twice"
    assert len({r["report_id"] for r in rows}) == len(rows)
    assert sum(r["dropped_windows"] for r in rows) == 0


def test_follows_the_server_report_interval(kit: Kit):
    device = kit.device(check_interval_seconds=0.5)  # the device's own loop
    kit.wait_status(device, "v1 installed", version="1")
    fed, deadline = 0, time.monotonic() + FEED_SECONDS
    while time.monotonic() < deadline:
        fed += 1
        kit.feed(device, 1, first=fed)
        time.sleep(0.02)
    device_id = device.stop()["device_id"]

    rows = [r for r in kit.reports(device_id) if r["inferences"]]
    assert sum(r["inferences"] for r in rows) == fed
    lengths = [round(r["window_seconds"], 2) for r in rows]
    # windows of REPORT_INTERVAL_SECONDS (the device's default is 30 s): the first and the last are cut short
    assert 3 <= len(rows) <= FEED_SECONDS / REPORT_INTERVAL_SECONDS + 3, lengths
    assert max(lengths) <= 2.5 * REPORT_INTERVAL_SECONDS, lengths
