"""The next variant after a refusal (protocol §3.1, §3.4, §7.4): a device that refuses the variant
it was assigned asks again in the same check-in, naming it in ``exclude``, and runs the next-best
variant of the same release; it reports the refusal once, under that release and its cohort."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from conformance.kit import Kit
from conformance.proxy import Fault
from conformance.releases import FALLBACK, PREFERRED, TWO_VARIANTS


def test_runs_the_next_variant_after_a_refusal_in_the_same_check_in(kit: Kit):
    device = kit.device()
    device_id = device.check_in()["device_id"]
    preferred = f"/v1/artifacts/{kit.releases.variant(TWO_VARIANTS, PREFERRED)['sha256']}"
    kit.proxy.arm(Fault.tamper(preferred))  # the variant the server prefers arrives altered
    kit.server.set_stable(TWO_VARIANTS)
    polls = f"/v1/devices/{device_id}/assignment"
    before = len(kit.proxy.exchanges("GET", polls))

    status = device.check_in()  # one check-in
    assert (status["version"], status["variant"], status["cohort"]) == (TWO_VARIANTS, FALLBACK, "stable")
    asked = [parse_qs(urlsplit(e.path).query) for e in kit.proxy.exchanges("GET", polls)[before:]]
    assert [(q.get("exclude_version"), q.get("exclude")) for q in asked] == [
        (None, None), ([TWO_VARIANTS], [PREFERRED])], "the next poll of the check-in names it"

    assert device.check_in()["variant"] == FALLBACK, "while backed off, the refused variant stays excluded"
    assert len(kit.proxy.exchanges("GET", preferred)) == 1, "the refused variant is not fetched again at once"
    kit.feed(device, 3)
    device.close_window()
    assert device.deliver()

    rows = [r for r in kit.reports(device_id) if r["version"] == TWO_VARIANTS]
    assert {(r["cohort"], r["rollout_id"]) for r in rows} == {("stable", None)}
    refused = [(r["err_load_failed"], r["err_golden_mismatch"], r["inferences"]) for r in rows
               if r["variant_id"] == PREFERRED]
    assert refused == [(1, 0, 0)], "one refusal, under the release and variant assigned, with no inference"
    served = [r for r in rows if r["variant_id"] == FALLBACK]
    assert sum(r["inferences"] for r in served) == 3
    assert sum(r["err_load_failed"] + r["err_golden_mismatch"] for r in served) == 0
