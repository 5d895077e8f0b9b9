"""What one run of the simulator is: :class:`SimulationConfig`, checked when it is made.

Its own module because two others read it and must not read each other: the runner
(:mod:`~rollout_server.simulator.runner`) runs it, the summary
(:mod:`~rollout_server.simulator.summary`) reports its settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rollout_server.simulator.errors import SettingsError
from rollout_server.simulator.fleet import DEFAULT_CLASSES
from rollout_server.simulator.profiles import ProfileTable

MAX_DEVICES = 100_000
MAX_WORKERS = 64
MAX_DURATION_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class SimulationConfig:
    """One run of the simulator.

    Attributes:
        server: base URL; must be on loopback (:func:`~rollout_server.simulator.safety.loopback_target`).
        enrollment_token: an enrollment token of the server.
        model: the model the devices poll for.
        devices: fleet size.
        duration_seconds: the run stops after this many real seconds at the latest.
        window_seconds: real seconds between a device's reports (and assignment polls).
        time_scale: simulated seconds per real second: a window of ``window_seconds`` real
            seconds reports ``window_seconds × time_scale`` simulated seconds of traffic. Report
            timestamps stay real (the server's stages and analysis windows run on its clock);
            only the inference counts are compressed.
        inferences_per_second: mean inferences per device per simulated second (Poisson).
        labelled_fraction: share of successful inferences that carry a label.
        profiles: behaviour per release.
        classes: device class → share of the fleet.
        runtimes: class (or ``*``) → runtime name → version; the class defaults otherwise.
        workers: worker threads.
        seed: seeds the fleet plan and the workers' random generators.
        watch_rollout: a rollout id to follow; the run stops when it is promoted, rolled back
            or aborted.
        operator_token: a viewer-or-above token to read ``watch_rollout``.
        request_timeout_seconds: per request.
    """

    server: str
    enrollment_token: str
    model: str
    devices: int = 100
    duration_seconds: float = 60.0
    window_seconds: float = 5.0
    time_scale: float = 1.0
    inferences_per_second: float = 1.0
    labelled_fraction: float = 0.2
    profiles: ProfileTable = field(default_factory=ProfileTable)
    classes: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    runtimes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    workers: int = 8
    seed: int = 0
    watch_rollout: int | None = None
    operator_token: str | None = None
    request_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        from rollout_server.validation import NAME

        checks = [
            (bool(NAME.match(self.model)), f"model {self.model!r} is not a model name ([a-z0-9-]+)"),
            (bool(self.enrollment_token), "an enrollment token is needed"),
            (1 <= self.devices <= MAX_DEVICES, f"devices must be 1 to {MAX_DEVICES:,}, got {self.devices!r}"),
            (0 < self.duration_seconds <= MAX_DURATION_SECONDS,
             f"duration must be in (0, {MAX_DURATION_SECONDS:g}] seconds, got {self.duration_seconds!r}"),
            (0.1 <= self.window_seconds <= 3600,
             f"window must be 0.1 to 3600 s, got {self.window_seconds!r}"),
            (0 < self.time_scale <= 1e6, f"time scale must be in (0, 1e6], got {self.time_scale!r}"),
            (0 <= self.inferences_per_second <= 1e6,
             f"inferences per second must be in [0, 1e6], got {self.inferences_per_second!r}"),
            (0 <= self.labelled_fraction <= 1,
             f"labelled fraction must be in [0, 1], got {self.labelled_fraction!r}"),
            (bool(self.classes), "at least one device class is needed"),
            (1 <= self.workers <= MAX_WORKERS, f"workers must be 1 to {MAX_WORKERS}, got {self.workers!r}"),
            (self.watch_rollout is None or bool(self.operator_token),
             "watching a rollout needs an operator token (--token or $EDGESHIP_TOKEN)"),
            (self.request_timeout_seconds > 0, "request timeout must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
