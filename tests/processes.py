"""Child processes that tests start (servers, Prometheus): stopping them."""

from __future__ import annotations

import subprocess


def stop_processes(*processes: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM every process, then wait for each up to ``timeout`` seconds; kill one that lingers."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
