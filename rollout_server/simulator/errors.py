"""Errors of the fleet simulator: one base class, printed by the ``edgeship`` CLI as one line."""

from __future__ import annotations

from edgeship.contract.errors import EdgeshipError


class SimulatorError(EdgeshipError):
    """The simulation cannot start or go on (bad settings, unknown rollout, refused token)."""


class SettingsError(SimulatorError, ValueError):
    """A setting or CLI spec is malformed; the message names the bad value."""


class NotLoopbackError(SimulatorError, ValueError):
    """The server URL does not point at this machine's loopback interface; nothing was sent."""
