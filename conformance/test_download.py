"""Resumable downloads (protocol §5.3): a transfer cut in the middle, or a device killed in the
middle of one, resumes from the bytes it has with ``Range: bytes=N-``; neither is a refusal."""

from __future__ import annotations

import re
import time

from conformance.kit import Kit
from conformance.proxy import Fault

CUT_AFTER_BYTES = 40_000  # of the ~97 kB variant file


def resumed_from(range_header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
    assert match, f"the second request must ask for the rest (Range: bytes=N-), sent {range_header!r}"
    return int(match.group(1))


def check_resumed(kit: Kit, device_id: str) -> None:
    size = kit.releases.variant("2")["size_bytes"]
    first, second = kit.proxy.exchanges("GET", kit.artifact_route("2"))
    assert first.request_headers.get("range") in (None, "bytes=0-")
    offset = resumed_from(second.request_headers.get("range"))
    assert 0 < offset <= CUT_AFTER_BYTES, f"resumed from byte {offset}; {CUT_AFTER_BYTES} had arrived"
    assert second.status == 206 and second.bytes_sent == size - offset
    rows = kit.reports(device_id)
    refused = sum(r["err_load_failed"] + r["err_golden_mismatch"] for r in rows)
    assert refused == 0, "a transfer error is not a refusal"


def test_resumes_a_download_cut_in_the_middle(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    kit.proxy.arm(Fault.cut(kit.artifact_route("2"), CUT_AFTER_BYTES))
    kit.server.set_stable("2")
    assert device.check_in()["version"] == "1", "half a file must not run"
    assert device.check_in()["version"] == "2"
    device.close_window()
    assert device.deliver()
    check_resumed(kit, device_id)


def test_resumes_a_download_after_a_crash_in_the_middle(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    kit.proxy.arm(Fault.stall(kit.artifact_route("2"), CUT_AFTER_BYTES))
    kit.server.set_stable("2")
    device.send("check_in")  # no answer expected: the transfer hangs after the first bytes
    kit.proxy.wait_for(lambda ex: any(e.fault == "stall" and e.bytes_sent >= CUT_AFTER_BYTES for e in ex),
                       60, "the first bytes of the download")
    time.sleep(1.0)  # the device writes what arrived (40 kB) before it is killed
    device.kill()
    assert device.start()["version"] == "1", "after a crash the installed model serves at once"
    assert device.check_in()["version"] == "2"
    device.close_window()
    assert device.deliver()
    check_resumed(kit, device_id)
