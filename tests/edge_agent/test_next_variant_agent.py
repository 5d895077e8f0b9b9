"""A variant that fails to load on the device: the agent asks at once for the next-best variant of
the same release and runs it, instead of sitting without a model until the backoff ends.

A real server in a subprocess, real HTTP, real converted releases (ONNX and TFLite variants);
the failure is injected where the runtime loads the file (``edge_agent.model.open_runner``), as a
runtime whose session creation fails on this device would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent import model as agent_model
from edge_agent.agent import Agent
from tests.edge_agent.conftest import wait_until
from tests.edge_agent.test_agent_e2e import eval_batches, feed, record_check_ins, stored_reports


class FailingFormats:
    """Wraps ``open_runner``: loading a file of a failing format raises, as a broken runtime does.

    ``fail_first`` fails the format of the first file loaded (whichever the server preferred);
    ``formats`` fails those named.
    """

    def __init__(self, real: Any, formats: set[str] | None = None) -> None:
        self.real = real
        self.formats = formats
        self.loads: list[tuple[str, bool]] = []  # (format, loaded)

    def __call__(self, path: Path, format: str, *args: Any, **kwargs: Any) -> Any:
        if self.formats is None:
            self.formats = {format}
        failing = format in self.formats
        self.loads.append((format, not failing))
        if failing:
            raise RuntimeError(f"{format} session creation failed on this device")
        return self.real(path, format, *args, **kwargs)


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch):
    def install(formats: set[str] | None = None) -> FailingFormats:
        wrapper = FailingFormats(agent_model.open_runner, formats)
        monkeypatch.setattr(agent_model, "open_runner", wrapper)
        return wrapper

    return install


def variant_formats(releases: dict[str, Any], version: str) -> dict[str, str]:
    manifest = json.loads((Path(releases["releases"][version]) / "manifest.json").read_text())
    return {v["id"]: v["format"] for v in manifest["variants"]}


def test_a_variant_that_fails_to_load_gives_way_to_the_next_in_the_same_check_in(agent_config, server,
                                                                                  releases, failing):
    loads = failing()  # the format the server prefers for this device fails to load
    agent = Agent(agent_config(variant_backoff_seconds=600.0))
    check_ins = record_check_ins(agent)
    agent.start()
    try:
        wait_until(lambda: agent.current is not None, what="a model running")
        failed_format = loads.loads[0][0]
        assert loads.loads[0] == (failed_format, False)
        # the check-in that saw the refusal ended with the other variant running: no 600 s wait
        assert check_ins[0][1] == "1"
        formats = variant_formats(releases, "1")
        running = agent.current.variant_id
        assert agent.current.version == "1" and formats[running] != failed_format
        images, labels = eval_batches(releases)
        feed(agent, images, labels, 10)
        wait_until(lambda: any(r["err_load_failed"] for r in stored_reports(server))
                   and any(r["variant_id"] == running for r in stored_reports(server)),
                   what="the refusal and the running variant reported")
        seen = len(check_ins)
        wait_until(lambda: len(check_ins) >= seen + 3, what="three more check-ins")
        assert agent.current.variant_id == running  # it stays on it: the refused one is not retried
        assert [f for f, _ in loads.loads].count(failed_format) == sum(1 for f in formats.values()
                                                                      if f == failed_format)
    finally:
        agent.stop()
    refused = {r["variant_id"] for r in stored_reports(server) if r["err_load_failed"]}
    assert refused == {v for v, f in formats.items() if f == failed_format}  # each tried once, reported
    assert all(r["inferences"] == 0 for r in stored_reports(server) if r["err_load_failed"])


def test_when_every_variant_fails_the_agent_backs_off(agent_config, server, releases, failing):
    formats = variant_formats(releases, "1")
    loads = failing(set(formats.values()))
    agent = Agent(agent_config(variant_backoff_seconds=600.0))
    check_ins = record_check_ins(agent)
    agent.start()
    try:
        wait_until(lambda: len(check_ins) >= 1, what="the first check-in")
        assert len(loads.loads) == len(formats)  # every variant tried once, in that first check-in
        wait_until(lambda: len(check_ins) >= 4, what="three more check-ins")
        assert len(loads.loads) == len(formats) and agent.current is None  # backed off: no retries
        wait_until(lambda: {r["variant_id"] for r in stored_reports(server) if r["err_load_failed"]}
                   == set(formats), what="a load_failed report for each variant")
    finally:
        agent.stop()
