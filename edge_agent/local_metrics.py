"""An optional local ``/metrics`` endpoint, for people who scrape their devices with Prometheus.

Renders the Prometheus text format (0.0.4) itself, without ``prometheus_client``. Fleet-shaped
metrics use the exact names and labels of ``edgeship.contract.metrics`` and the latency histogram
has the server's /metrics bounds (``METRIC_BUCKETS_SECONDS``: 100 µs to 10 s, at most 10% apart),
so the same queries and dashboards work on one device; agent-only metrics are named
``edgeship_agent_*``::

    metrics = LocalMetrics(device_class="rpi4")
    server, thread = metrics.serve(port=9464)
    metrics.observe_inference(key, latency_seconds=0.004)
    ...
    server.shutdown(); server.server_close()

Counts are since the agent started (Prometheus counters), not per report window.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from edge_agent.window import WindowKey, peak_rss_bytes, shadow_distance
from edgeship.contract.latency import METRIC_BUCKETS_SECONDS
from edgeship.contract.metrics import METRICS
from edgeship.contract.reports import counts_as_inference

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FLEET = ("model", "variant", "cohort", "device_class")
#: latency buckets: one per bound of ``METRIC_BUCKETS_SECONDS`` plus +Inf; their ``le`` values
#: spelled as prometheus_client (and so the server) prints them (``floatToGoString``: repr here).
_LATENCY_BUCKETS = len(METRIC_BUCKETS_SECONDS) + 1
_LE_VALUES = (*(repr(float(bound)) for bound in METRIC_BUCKETS_SECONDS), "+Inf")


@dataclass(frozen=True)
class _Family:
    name: str
    kind: str
    help: str
    labels: tuple[str, ...]


def _catalogued(name: str) -> _Family:
    spec = METRICS[name]
    return _Family(spec.name, spec.kind, spec.help, spec.labels)


INFERENCES = _catalogued("edgeship_inferences_total")
ERRORS = _catalogued("edgeship_inference_errors_total")
LATENCY = _catalogued("edgeship_inference_latency_seconds")
EVAL_SAMPLES = _catalogued("edgeship_eval_samples_total")
EVAL_CORRECT = _catalogued("edgeship_eval_correct_total")
SHADOW_SAMPLES = _Family("edgeship_agent_shadow_samples_total", "counter",
                         "Shadow comparisons of a candidate against the live model.", _FLEET)
SHADOW_AGREE = _Family("edgeship_agent_shadow_agree_total", "counter",
                       "Shadow comparisons where candidate and live model agreed.", _FLEET)
SHADOW_MEASURED = _Family("edgeship_agent_shadow_measured_total", "counter",
                          "Shadow comparisons that measured an output distance (the candidate ran).", _FLEET)
SHADOW_DISTANCE = _Family("edgeship_agent_shadow_distance_total", "counter",
                          "Sum of measured shadow output distances (over shadow_measured: the mean).", _FLEET)
MODEL_INFO = _Family("edgeship_agent_model_info", "gauge",
                     "1 for the version and variant the agent runs, per model.",
                     ("model", "version", "variant", "device_class"))
OUTBOX_REPORTS = _Family("edgeship_agent_outbox_reports", "gauge",
                         "Reports waiting in the outbox for delivery.", ("device_class",))
DROPPED_WINDOWS = _Family("edgeship_agent_dropped_windows", "gauge",
                          "Windows dropped that no queued report carries yet.", ("device_class",))
PEAK_RSS = _Family("edgeship_agent_peak_rss_bytes", "gauge",
                   "Peak resident memory of the agent process.", ("device_class",))

_COUNTERS = (INFERENCES, ERRORS, EVAL_SAMPLES, EVAL_CORRECT, SHADOW_SAMPLES, SHADOW_AGREE, SHADOW_MEASURED,
             SHADOW_DISTANCE)


class LocalMetrics:
    """Counters, a latency histogram and a few gauges of one agent, rendered for Prometheus.

    Thread-safe: the agent loop observes while the HTTP thread renders.

    Args:
        device_class: this device's class, the ``device_class`` label of every series.

    Attributes:
        port: the port :meth:`serve` bound, None before.
    """

    def __init__(self, device_class: str) -> None:
        self.device_class = device_class
        self.port: int | None = None
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {
            f.name: defaultdict(int) for f in _COUNTERS}
        self._latency_counts: dict[tuple[str, ...], list[int]] = {}
        self._latency_sums: dict[tuple[str, ...], float] = defaultdict(float)
        self._models: dict[str, tuple[str, str]] = {}
        self._outbox: tuple[int, int] | None = None

    def _labels(self, family: _Family, key: WindowKey, reason: str = "") -> tuple[str, ...]:
        """The label values of ``key`` in ``family``'s label order (as the catalogue lists them)."""
        values = {"model": key.model, "variant": key.variant, "cohort": key.cohort,
                  "device_class": self.device_class, "reason": reason}
        return tuple(values[name] for name in family.labels)

    def observe_inference(self, key: WindowKey, latency_seconds: float) -> None:
        """Count one successful inference and its latency.

        Raises:
            ValueError: the latency is negative or not finite.
        """
        latency_seconds = float(latency_seconds)
        if not (math.isfinite(latency_seconds) and latency_seconds >= 0):
            raise ValueError(f"latency_seconds must be finite and >= 0, got {latency_seconds!r}")
        with self._lock:
            self._counters[INFERENCES.name][self._labels(INFERENCES, key)] += 1
            labels = self._labels(LATENCY, key)
            counts = self._latency_counts.get(labels)
            if counts is None:
                counts = self._latency_counts[labels] = [0] * _LATENCY_BUCKETS
            counts[bisect_left(METRIC_BUCKETS_SECONDS, latency_seconds)] += 1  # le: bound >= latency
            self._latency_sums[labels] += latency_seconds

    def observe_error(self, key: WindowKey, reason: str) -> None:
        """Count one error; like a report, a per-inference reason also counts an inference.

        Raises:
            ValueError: ``reason`` is not a known error reason.
        """
        is_inference = counts_as_inference(reason)
        with self._lock:
            self._counters[ERRORS.name][self._labels(ERRORS, key, reason)] += 1
            if is_inference:
                self._counters[INFERENCES.name][self._labels(INFERENCES, key)] += 1

    def observe_labelled(self, key: WindowKey, correct: bool) -> None:
        """Count one labelled (or golden) sample and whether the model got it right."""
        with self._lock:
            self._counters[EVAL_SAMPLES.name][self._labels(EVAL_SAMPLES, key)] += 1
            self._counters[EVAL_CORRECT.name][self._labels(EVAL_CORRECT, key)] += int(bool(correct))

    def observe_shadow(self, key: WindowKey, agree: bool, distance: float | None) -> None:
        """Count one shadow comparison, whether it agreed and its output distance (None or
        ``math.inf`` when the candidate gave none, as in :meth:`Window.record_shadow`).

        Raises:
            ValueError: the distance is negative or NaN.
        """
        distance = shadow_distance(distance)
        labels = self._labels(SHADOW_SAMPLES, key)  # the shadow families share labels
        with self._lock:
            self._counters[SHADOW_SAMPLES.name][labels] += 1
            self._counters[SHADOW_AGREE.name][labels] += int(bool(agree))
            if distance is not None:
                self._counters[SHADOW_MEASURED.name][labels] += 1
                self._counters[SHADOW_DISTANCE.name][labels] += distance

    def set_model(self, model: str, version: str, variant: str) -> None:
        """Record the version and variant now running for ``model`` (replacing the previous)."""
        with self._lock:
            self._models[model] = (version, variant)

    def clear_model(self, model: str) -> None:
        """Forget ``model`` (no longer assigned to this device)."""
        with self._lock:
            self._models.pop(model, None)

    def set_outbox(self, pending_reports: int, dropped_windows: int) -> None:
        """Record the outbox's queue length and its not-yet-reported dropped windows."""
        with self._lock:
            self._outbox = (int(pending_reports), int(dropped_windows))

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format 0.0.4."""
        device = (self.device_class,)
        with self._lock:
            counters = {name: dict(series) for name, series in self._counters.items()}
            latency = {labels: (list(counts), self._latency_sums[labels])
                       for labels, counts in self._latency_counts.items()}
            models = dict(self._models)
            outbox = self._outbox
        lines: list[str] = []
        for family in _COUNTERS:
            _render_family(lines, family, sorted(counters[family.name].items()))
        _header(lines, LATENCY)
        for labels, (counts, total_seconds) in sorted(latency.items()):
            _render_histogram(lines, LATENCY, labels, counts, total_seconds)
        _render_family(lines, MODEL_INFO, [((model, version, variant, *device), 1)
                                           for model, (version, variant) in sorted(models.items())])
        if outbox is not None:
            _render_family(lines, OUTBOX_REPORTS, [(device, outbox[0])])
            _render_family(lines, DROPPED_WINDOWS, [(device, outbox[1])])
        rss = peak_rss_bytes()
        _render_family(lines, PEAK_RSS, [(device, rss)] if rss else [])
        return "\n".join(lines) + "\n"

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
        """Serve ``GET /metrics`` (404 elsewhere) from a daemon thread.

        Args:
            host: the address to bind; the loopback by default (pass "0.0.0.0" to be scraped).
            port: the port; 0 picks a free one, then :attr:`port` says which.

        Returns:
            The server (stop it with ``shutdown()`` then ``server_close()``) and its thread.

        Raises:
            OSError: the address cannot be bound.
        """
        server = ThreadingHTTPServer((host, port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_port
        thread = threading.Thread(target=server.serve_forever, name="edgeship-local-metrics", daemon=True)
        thread.start()
        return server, thread


def _handler_for(metrics: LocalMetrics) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path != "/metrics":
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")
                return
            self._send(200, CONTENT_TYPE, metrics.render().encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("local metrics: " + format, *args)

    return MetricsHandler


def _header(lines: list[str], family: _Family) -> None:
    lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
    lines.append(f"# TYPE {family.name} {family.kind}")


def _render_family(lines: list[str], family: _Family, series: list[tuple[tuple[str, ...], float]]) -> None:
    _header(lines, family)
    for labels, value in series:
        lines.append(f"{family.name}{_label_text(family.labels, labels)} {_number(value)}")


def _render_histogram(lines: list[str], family: _Family, labels: tuple[str, ...], counts: list[int],
                      total_seconds: float) -> None:
    cumulative = 0
    for bound, count in zip(_LE_VALUES, counts, strict=True):
        cumulative += count
        le_labels = _label_text((*family.labels, "le"), (*labels, bound))
        lines.append(f"{family.name}_bucket{le_labels} {cumulative}")
    label_text = _label_text(family.labels, labels)
    lines.append(f"{family.name}_sum{label_text} {_number(total_seconds)}")
    lines.append(f"{family.name}_count{label_text} {cumulative}")


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{name}="{_escape_label(str(value))}"'
                     for name, value in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
