"""A real Prometheus scraping the demo's server, with edgeship's alert rules loaded.

The configuration comes from :func:`monitoring.scrape_config.render_scrape_config` and the
rules from ``monitoring/prometheus/alerts.yml``; storage is a directory of the demo's run.
Usage::

    prom = PrometheusProcess("/usr/bin/prometheus", "127.0.0.1:8080", run_dir / "prometheus").start()
    prom.query('sum(rate(edgeship_inferences_total[1m]))')   # the /api/v1/query answer
    prom.stop()
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from examples.demo.processes import free_port, port_is_free, spawn, stop_process
from monitoring.scrape_config import JOB, render_scrape_config

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "alerts.yml"
DEFAULT_PORT = 9090
STARTUP_SECONDS = 60.0


def find_prometheus() -> str | None:
    """The ``prometheus`` binary on PATH (Debian package ``prometheus``), or None."""
    return shutil.which("prometheus")


class PrometheusProcess:
    """Prometheus on 127.0.0.1 scraping ``target`` every ``scrape_interval``.

    Args:
        binary: the ``prometheus`` executable.
        target: the server's ``host:port``.
        directory: configuration, rules copy, TSDB and ``prometheus.log`` go here.
        port: listen port (default: 9090 when free, else a free one).
        scrape_interval: also the rule evaluation interval.
    """

    def __init__(self, binary: str, target: str, directory: Path, port: int | None = None,
                 scrape_interval: str = "2s") -> None:
        self.binary = binary
        self.target = target
        self.directory = Path(directory).resolve()
        self.port = port or (DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.scrape_interval = scrape_interval
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "prometheus.log"

    def start(self) -> PrometheusProcess:
        """Write the configuration, start Prometheus and wait for its first successful scrape.

        Raises:
            RuntimeError: Prometheus exited or did not scrape the server within a minute.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        rules = shutil.copy(RULES, self.directory / "alerts.yml")
        config = self.directory / "prometheus.yml"
        config.write_text(render_scrape_config(self.target, rule_files=[str(rules)],
                                               scrape_interval=self.scrape_interval,
                                               evaluation_interval=self.scrape_interval))
        self.process = spawn(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            self.log_path, cwd=self.directory)
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._scraped():
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.process.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not scrape {self.target} in {STARTUP_SECONDS:.0f} s: "
                                   f"{self.log_tail()}")
            time.sleep(0.3)
        return self

    def _scraped(self) -> bool:
        try:
            return bool(self.query(f'up{{job="{JOB}"}} == 1').get("data", {}).get("result"))
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None, timeout: float = 10) -> dict[str, Any]:
        """``/api/v1/query`` for ``expr`` (at epoch seconds ``at``, default now); the JSON answer.

        A query Prometheus refuses comes back as its JSON error body (``status: error``).
        """
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:  # 400/422 with a JSON body
            return json.load(error)

    def graph_url(self, *exprs: str, range_input: str = "15m") -> str:
        """A link to Prometheus' graph page showing ``exprs``."""
        params: dict[str, str] = {}
        for i, expr in enumerate(exprs):
            params.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": range_input})
        return f"{self.url}/graph?{urllib.parse.urlencode(params)}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (Prometheus shuts down cleanly), SIGKILL after 15 s."""
        if self.process is not None:
            stop_process(self.process, 15)
        self.process = None
