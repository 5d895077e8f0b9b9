"""The device side and the release contract import without torch or the converter toolchains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "coremltools", "onnx", "litert_torch", "ai_edge_quantizer", "flask", "matplotlib")


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         check=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_agent_runtimes_and_release_contract_stay_light():
    modules = imported_after(
        "import edge_agent.agent, edgeship.runtimes, edgeship.runtimes.onnx, edgeship.runtimes.litert\n"
        "import edgeship.runtimes.coreml, edgeship.runtimes.measure\n"
        "import edgeship.contract.manifest, edgeship.contract.signing, edgeship.contract.reports\n"
        "import converter, converter.catalogue, converter.recipe"
    )
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_cli_help_and_catalogue_do_not_load_toolchains():
    modules = imported_after("from edgeship.cli import build_parser, main\nmain(['variants'])")
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_the_version_a_bug_report_names_is_the_installed_one(capsys):
    from importlib.metadata import version

    from edgeship.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgeship {version('edgeship')}"
