"""Child processes of the demo: started with their log in a file, stopped in reverse order.

Every process the demo starts (the release build, the server, Prometheus, the fleet workers)
goes through :class:`Children`, so one ``stop_all`` (on success, on error or on Ctrl-C) ends
them all. On Linux each child also gets ``PR_SET_PDEATHSIG``: if the demo itself dies without
cleaning up (``kill -9``), the kernel sends the child SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when nothing listens on ``127.0.0.1:port`` and it can be bound."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the repository importable and without an operator token."""
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_TOKEN"}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, **extra}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def spawn(args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen:
    """Start ``args`` with stdout and stderr appended to ``log_path``.

    Args:
        args: the command line.
        log_path: the log file (created with its directory).
        env: the environment (default: :func:`child_env`).
        cwd: working directory (default: the repository).

    Returns:
        The running process.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(args), cwd=cwd, env=dict(env) if env is not None else child_env(), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )


def stop_process(process: subprocess.Popen, timeout_seconds: float = 10.0) -> int | None:
    """SIGTERM, wait up to ``timeout_seconds``, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C inside the block (a second Ctrl-C must not cut a shutdown short).

    Only the main thread can change signal handlers; elsewhere this does nothing.
    """
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class Children:
    """The processes the demo started, by name; :meth:`stop_all` stops the newest first."""

    def __init__(self) -> None:
        self._processes: list[tuple[str, subprocess.Popen, float]] = []

    def add(self, name: str, process: subprocess.Popen,
            stop_timeout_seconds: float = 10.0) -> subprocess.Popen:
        """Track ``process``; returns it."""
        self._processes.append((name, process, stop_timeout_seconds))
        return process

    def pids(self) -> dict[str, int]:
        """``{name: pid}`` of the tracked processes still running."""
        return {name: p.pid for name, p, _ in self._processes if p.poll() is None}

    def exited(self) -> list[tuple[str, int]]:
        """``(name, exit code)`` of tracked processes that ended on their own."""
        return [(name, p.returncode) for name, p, _ in self._processes if p.poll() is not None]

    def stop(self, process: subprocess.Popen) -> None:
        """Stop one tracked process now and forget it."""
        for entry in list(self._processes):
            if entry[1] is process:
                stop_process(process, entry[2])
                self._processes.remove(entry)

    def stop_all(self) -> None:
        """Stop every tracked process, newest first; safe to call twice and from ``finally``.

        All get SIGTERM at once so their shutdowns overlap; then each is waited for (SIGKILL
        after its timeout). Ctrl-C is ignored meanwhile.
        """
        with sigint_ignored():
            for _, process, _ in reversed(self._processes):
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.terminate()
            while self._processes:
                _, process, timeout = self._processes.pop()
                stop_process(process, timeout)
