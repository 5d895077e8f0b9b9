"""The skip rule (tests/skip_policy.py) on generated test files, each run in a pytest subprocess:
under CI=true a skip off the allow-list fails and names its reason, an allowed one stays a skip;
with CI unset every skip stays a skip; the agent-only venv's allowances depend on the venv."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.skip_policy import ALLOWED_SKIPS, allowed

ROOT = Path(__file__).resolve().parents[1]

RUNTIME_SKIPS = '''
import pytest
from tests.skip_policy import AGENT_VENV_ONLY, COREML_NEEDS_MACOS, DEV_VENV_ONLY, missing, require_module

def test_unlisted_skip():
    pytest.skip("no widget on this machine")

@pytest.mark.skipif(True, reason="unlisted mark reason")
def test_unlisted_mark():
    pass

@pytest.fixture
def tool():
    missing("widgettool not installed")

def test_fixture_with_a_missing_tool(tool):
    pass

def test_missing_module():
    require_module("edgeship_no_such_module_for_tests")

def test_importorskip():
    pytest.importorskip("edgeship_no_such_module_for_tests")

def test_coreml_off_macos():
    pytest.skip(f"{COREML_NEEDS_MACOS} predicts on macOS only")

def test_agent_venv_check():
    pytest.skip(f"{AGENT_VENV_ONLY} checks the agent-only venv")

def test_dev_venv_only():
    pytest.skip(f"{DEV_VENV_ONLY} needs flask")

def test_passes():
    pass

@pytest.mark.xfail(reason="an expected failure is not a skip", strict=True)
def test_expected_failure():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("edgeship_no_such_module_for_tests")

def test_never_collected():
    pass
'''

PASSING = "def test_passes():\n    pass\n"


def run(tmp_path: Path, files: dict[str, str], ci: bool, agent_only: bool = False):
    """Run pytest with the skip policy on ``files``; (return code, {test: outcome}, output)."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "EDGESHIP_AGENT_ONLY", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    if agent_only:
        env["EDGESHIP_AGENT_ONLY"] = "1"
    junit = tmp_path / "junit.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider", "-rfEs",
         f"--basetemp={tmp_path / 'basetemp'}",
         "-q", f"--junitxml={junit}", "--rootdir", str(tmp_path), *files],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        tags = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        message = " ".join((child.get("message") or "") + (child.text or "") for child in case)
        outcomes[case.get("name") or case.get("classname")] = (tags[0] if tags else "passed", message)
    return done.returncode, outcomes, done.stdout + done.stderr


def test_the_allow_list_is_short_and_each_entry_says_why():
    assert len(ALLOWED_SKIPS) <= 4 and all(len(e.why) > 40 for e in ALLOWED_SKIPS)
    assert allowed("could not import 'torch': No module named 'torch'") is None
    assert allowed("no widget") is None


def test_without_ci_every_skip_stays_a_skip(tmp_path):
    code, outcomes, output = run(tmp_path, {"test_gen_skips.py": RUNTIME_SKIPS}, ci=False)
    assert code == 0, output
    skipped = {name for name, (outcome, _) in outcomes.items() if outcome == "skipped"}
    assert skipped == {"test_unlisted_skip", "test_unlisted_mark", "test_fixture_with_a_missing_tool",
                       "test_missing_module", "test_importorskip", "test_coreml_off_macos",
                       "test_agent_venv_check", "test_dev_venv_only", "test_expected_failure"}
    # the summary lists each reason and counts the skips
    assert "no widget on this machine" in output and "widgettool not installed" in output
    assert "skips (CI unset: skips allowed): 8 skipped" in output


def test_under_ci_an_unlisted_skip_fails_and_names_its_reason(tmp_path):
    code, outcomes, output = run(tmp_path, {"test_gen_skips.py": RUNTIME_SKIPS}, ci=True)
    assert code == 1, output
    failed = {name: message for name, (outcome, message) in outcomes.items()
              if outcome in ("failure", "error")}
    assert set(failed) == {"test_unlisted_skip", "test_unlisted_mark", "test_fixture_with_a_missing_tool",
                           "test_missing_module", "test_importorskip", "test_dev_venv_only"}, output
    assert "no widget on this machine" in failed["test_unlisted_skip"]
    assert "unlisted mark reason" in failed["test_unlisted_mark"]
    assert "widgettool not installed" in failed["test_fixture_with_a_missing_tool"]
    assert "edgeship_no_such_module_for_tests" in failed["test_importorskip"]
    assert "ALLOWED_SKIPS" in failed["test_unlisted_skip"]
    # allowed here: CoreML off macOS, and the agent-only venv's own check in the dev venv
    assert outcomes["test_coreml_off_macos"][0] == outcomes["test_agent_venv_check"][0] == "skipped"
    assert outcomes["test_passes"][0] == "passed" and outcomes["test_expected_failure"][0] == "skipped"
    assert "skips (CI=true: only allow-listed skips): 2 skipped" in output


def test_under_ci_the_agent_only_venv_allows_the_dev_venv_tests_and_not_its_own_check(tmp_path):
    code, outcomes, output = run(tmp_path, {"test_gen_skips.py": RUNTIME_SKIPS}, ci=True, agent_only=True)
    assert code == 1, output
    assert outcomes["test_dev_venv_only"][0] == "skipped"
    assert outcomes["test_agent_venv_check"][0] in ("failure", "error")
    assert outcomes["test_unlisted_skip"][0] == "failure"


@pytest.mark.parametrize("ci", [False, True])
def test_a_module_level_importorskip_fails_collection_under_ci(tmp_path, ci):
    code, _, output = run(tmp_path, {"test_gen_module.py": MODULE_SKIP, "test_gen_ok.py": PASSING},
                                 ci=ci)
    if not ci:
        assert code == 0 and "1 passed, 1 skipped" in output, output
        return
    assert code == 2 and "ERROR collecting test_gen_module.py" in output, output
    assert "could not import 'edgeship_no_such_module_for_tests'" in output
