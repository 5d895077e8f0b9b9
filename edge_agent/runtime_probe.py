"""Which installed model runtimes actually load a model here, found in child interpreters.

Package metadata says a runtime is installed; only loading and running a model says it works.
A native import can kill its process (SIGILL on a CPU it was not built for, SIGSEGV) or hang, so
each installed runtime is tried in a child interpreter (``python -m edge_agent.runtime_probe
RUNTIME``) with a timeout: it loads a tiny embedded model (:mod:`edge_agent.probe_models`)
through the same runner the agent uses and checks the answer. The agent announces only the
runtimes that passed, so the server never assigns a variant this device cannot run.

The answer is cached in the state directory (``runtimes.json``), keyed on the runtime packages'
versions, the interpreter and ``PYTHONPATH``: a restart does not probe again until one changes.
A probe that timed out is not cached (a slow boot is not a verdict).

Example:
    >>> loadable_runtimes(Path("/var/lib/edgeship"))
    {'onnxruntime': '1.20.1'}          # LiteRT installed, but its import crashed: not announced
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edge_agent.device import distribution_versions, installed_runtimes

log = logging.getLogger("edgeship.agent")

#: how long one runtime may take to import and run the probe model (TensorFlow on a Pi is slow).
PROBE_TIMEOUT_SECONDS = 60.0
CACHE_FILE = "runtimes.json"
#: bump when what a probe does changes: cached answers are then probed again.
PROBE_FORMAT = 1
STDERR_TAIL_LINES, STDERR_TAIL_CHARS = 3, 600
_PASSED = "edgeship-runtime-probe: passed"
#: runtime → the format of the model its probe loads.
PROBE_FORMATS = {"onnxruntime": "onnx", "onnxruntime-packed": "onnx", "litert": "tflite", "coreml": "coreml",
                 "mnn": "mnn", "openvino": "openvino"}


@dataclass(frozen=True)
class ProbeOutcome:
    """How one runtime's probe ended.

    Attributes:
        runtime: the runtime name (``onnxruntime``, ``litert``, ``coreml``).
        loaded: it loaded the probe model and answered right.
        detail: why not (``killed by SIGSEGV``, ``timed out after 60 s``, ``exit 1: <stderr>``).
        definite: False for a timeout, which may pass on a less busy start (not cached).
    """

    runtime: str
    loaded: bool
    detail: str = ""
    definite: bool = True


Prober = Callable[[Iterable[str], float], Mapping[str, ProbeOutcome]]


def probe_runtimes(runtimes: Iterable[str],
                   timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> dict[str, ProbeOutcome]:
    """Probe each runtime in its own child interpreter, all at once, each within ``timeout_seconds``.

    Never raises for what a child does: a crash, a hang or an exception is an outcome.
    """
    deadline = time.monotonic() + timeout_seconds
    children: dict[str, tuple[subprocess.Popen, IO[bytes], IO[bytes]]] = {}
    outcomes: dict[str, ProbeOutcome] = {}
    with ExitStack() as files:
        for runtime in runtimes:
            # files, not pipes: a child that writes much while we wait on another must not block
            out = files.enter_context(tempfile.TemporaryFile())
            err = files.enter_context(tempfile.TemporaryFile())
            try:
                child = subprocess.Popen(_child_command(runtime), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err)
            except OSError as error:
                outcomes[runtime] = ProbeOutcome(runtime, False, f"cannot start a probe: {error}")
                continue
            children[runtime] = (child, out, err)
        for runtime, (child, out, err) in children.items():
            outcomes[runtime] = _outcome(runtime, child, out, err, deadline, timeout_seconds)
    return outcomes


def loadable_runtimes(state_dir: Path | None, timeout_seconds: float = PROBE_TIMEOUT_SECONDS,
                      probe: Prober = probe_runtimes) -> dict[str, str]:
    """``{runtime: version}`` of the installed runtimes that passed their probe (module docstring).

    Args:
        state_dir: where ``runtimes.json`` caches the answer (None: no cache).
        timeout_seconds: per runtime.
        probe: how to probe (tests count or replace the children).
    """
    installed = installed_runtimes()
    key = cache_key()
    cache = state_dir / CACHE_FILE if state_dir is not None else None
    cached = _read_cache(cache, key)
    if cached is not None:
        for name, detail in cached["refused"].items():
            _log_refused(name, installed.get(name, "?"), f"{detail}; probed at an earlier start")
        return {name: version for name, version in cached["runtimes"].items() if name in installed}
    outcomes = probe(list(installed), timeout_seconds)
    runtimes = {name: installed[name] for name, outcome in outcomes.items() if outcome.loaded}
    for outcome in outcomes.values():
        if not outcome.loaded:
            _log_refused(outcome.runtime, installed.get(outcome.runtime, "?"), outcome.detail)
    if cache is not None and all(outcome.definite for outcome in outcomes.values()):
        refused = {o.runtime: o.detail for o in outcomes.values() if not o.loaded}
        _write_cache(cache, {"key": key, "runtimes": runtimes, "refused": refused})
    return runtimes


def cache_key() -> dict[str, Any]:
    """What the probes' answers depend on: the runtime packages and the interpreter running them."""
    return {"probe": PROBE_FORMAT, "python": sys.executable, "machine": platform.machine(),
            "pythonpath": os.environ.get("PYTHONPATH", ""), "distributions": distribution_versions()}


def _child_command(runtime: str) -> list[str]:
    # The package root is appended, not prepended: a runtime the environment provides (or
    # shadows through PYTHONPATH) is the one probed, as the agent would import it.
    root = str(Path(__file__).resolve().parents[1])
    code = (f"import sys; sys.path.append({root!r}); from edge_agent.runtime_probe import main; "
            f"sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, runtime]


def _outcome(runtime: str, child: subprocess.Popen, out: IO[bytes], err: IO[bytes], deadline: float,
             timeout_seconds: float) -> ProbeOutcome:
    try:
        code = child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return ProbeOutcome(runtime, False, f"timed out after {timeout_seconds:g} s", definite=False)
    out.seek(0)
    err.seek(0)
    stdout = out.read().decode(errors="replace")
    lines = [line.strip() for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    stderr = " | ".join(lines[-STDERR_TAIL_LINES:])[-STDERR_TAIL_CHARS:]  # a traceback ends with its reason
    if code == 0 and _PASSED in stdout:
        return ProbeOutcome(runtime, True)
    detail = f"killed by {_signal_name(-code)}" if code < 0 else f"exit {code}"
    return ProbeOutcome(runtime, False, f"{detail}: {stderr}" if stderr else detail)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _log_refused(runtime: str, version: str, detail: str) -> None:
    log.warning("runtime %s %s is installed but does not load a model here (%s): not announced",
                runtime, version, detail)


def _read_cache(path: Path | None, key: dict[str, Any]) -> dict[str, dict[str, str]] | None:
    """The cached ``runtimes`` and ``refused`` if the cache was written for ``key``."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    parts = {part: data.get(part) for part in ("runtimes", "refused")}
    if not all(isinstance(value, dict) for value in parts.values()):
        return None
    return {part: {str(k): str(v) for k, v in value.items()} for part, value in parts.items()}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(path.name + ".tmp")
    try:
        temp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temp, path)
    except OSError as err:  # a read-only or full disk: probe again at the next start
        log.warning("cannot cache the runtime probe in %s: %s", path, err)


def main(argv: list[str]) -> int:
    """The child: load and run the probe model of ``argv[0]``; print the pass line if it answered right."""
    runtime = argv[0] if argv else ""
    if runtime not in PROBE_FORMATS:
        print(f"unknown runtime {runtime!r}; known: {', '.join(PROBE_FORMATS)}", file=sys.stderr)
        return 2
    _run_probe_model(PROBE_FORMATS[runtime])
    print(_PASSED)
    return 0


def _run_probe_model(model_format: str) -> None:
    import numpy as np

    from edge_agent.probe_models import PROBE_INPUT, PROBE_MODELS, PROBE_OUTPUT
    from edgeship.runtimes import open_runner

    data = PROBE_MODELS[model_format]
    with tempfile.TemporaryDirectory(prefix="edgeship-probe-") as folder:
        path = Path(folder) / f"probe.{model_format}"
        path.write_bytes(data)
        outputs = open_runner(path, model_format, ["x"], threads=1).run({"x": PROBE_INPUT})
    if not np.allclose(outputs[0], PROBE_OUTPUT):
        raise RuntimeError(f"the probe model answered {outputs[0].tolist()}, not {PROBE_OUTPUT.tolist()}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
