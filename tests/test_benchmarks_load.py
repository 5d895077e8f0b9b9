"""Every benchmark module loads and answers ``--help``.

Benchmarks are not run by the test suite (they take minutes and want a quiet machine), so a
benchmark broken at import time would otherwise go unnoticed until someone needs its numbers.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from examples.demo.processes import ROOT, child_env

BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
assert len(BENCHMARKS) >= 10, BENCHMARKS  # the glob found the folder


def has_main(name: str) -> bool:
    return "__main__" in (ROOT / "benchmarks" / f"{name}.py").read_text()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_module_loads(name: str) -> None:
    args = [sys.executable, "-c", f"import benchmarks.{name}"]
    if has_main(name):
        args = [sys.executable, "-m", f"benchmarks.{name}", "--help"]
    done = subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"benchmarks/{name}.py: {done.stderr[-2000:]}"

