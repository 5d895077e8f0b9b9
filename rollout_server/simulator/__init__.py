"""Fleet simulation at scale: thousands of lightweight simulated devices, real HTTP, loopback only.

Usage::

    from rollout_server.simulator import Profile, ProfileTable, Simulation, SimulationConfig

    config = SimulationConfig(
        server="http://127.0.0.1:8080", enrollment_token=enroll, model="digits-cnn", devices=2000,
        duration_seconds=120, profiles=ProfileTable({"1": Profile(), "2": Profile(error_rate=0.05)}),
        watch_rollout=7, operator_token=operator)
    summary = Simulation(config, log=print).run()

or ``edgeship simulate --server URL --enroll-token T --model NAME ...``. Each device registers
with the enrollment token, polls its assignment with ``If-None-Match`` and posts one report per
window on the real ``/v1/reports`` schema, its numbers drawn from the profile of the release
its assignment names (:mod:`~rollout_server.simulator.profiles`). A small pool of worker
threads serves all devices (:mod:`~rollout_server.simulator.runner`). The run stops by itself
(duration, or the watched rollout reaching promoted / rolled_back / aborted) and refuses any
server that is not on loopback (:mod:`~rollout_server.simulator.safety`).

Modules: ``safety`` (loopback check), ``transport`` (keep-alive connections), ``profiles``
(behaviour per release), ``fleet`` (device classes), ``device`` (one device's protocol),
``stats`` and ``summary`` (counting and printing), ``watch`` (the rollout), ``config`` (one
run's settings), ``runner`` (the worker pool), ``cli`` (``edgeship simulate``).
"""

from __future__ import annotations

from rollout_server.simulator.config import SimulationConfig
from rollout_server.simulator.errors import NotLoopbackError, SettingsError, SimulatorError
from rollout_server.simulator.profiles import Profile, ProfileTable, parse_profile
from rollout_server.simulator.runner import Simulation
from rollout_server.simulator.safety import Target, loopback_target

__all__ = [
    "NotLoopbackError",
    "Profile",
    "ProfileTable",
    "SettingsError",
    "Simulation",
    "SimulationConfig",
    "SimulatorError",
    "Target",
    "loopback_target",
    "parse_profile",
]
