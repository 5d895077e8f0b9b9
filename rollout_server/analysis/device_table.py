"""One arm's data per device: the stage's counts and the same device's baseline before the rollout.

The guards compare arms device by device when they have this table
(:mod:`rollout_server.analysis.adjusted`): each device's rates in the stage, its own rates on the
stable model before the rollout began (its *baseline*), and its latencies in both periods. Rows
are devices, aligned across every field; arms of disjoint devices add (``a + b`` stacks rows),
so per-class tables pool into the arm's.

    table = DeviceTable.from_rows(inferences=[120, 80], errors=[1, 0], labelled=[24, 16],
                                  wrong=[2, 1], base_inferences=[2400, 0], base_errors=[20, 0],
                                  base_labelled=[480, 0], base_wrong=[45, 0])

A device without a baseline (new, or silent before the rollout) has zeros there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from rollout_server.analysis.device_latency import DeviceLatencies

#: the count columns, stage then baseline; every one a float array of one value per device
COUNTS: tuple[str, ...] = ("inferences", "errors", "labelled", "wrong",
                           "base_inferences", "base_errors", "base_labelled", "base_wrong")
#: the per-device latency matrices (rows aligned with the counts; None when not known)
LATENCIES: tuple[str, ...] = ("latency", "base_latency")
_NONE = np.zeros(0)


@dataclass(frozen=True, eq=False)
class DeviceTable:
    """Per-device counts of one arm (see the module docstring).

    Attributes:
        inferences, errors, labelled, wrong: the device's inferences, inference errors,
            labelled samples and wrong predictions in the stage.
        base_inferences, base_errors, base_labelled, base_wrong: the same on the stable model
            before the rollout started (its baseline); zeros when it has none.
        latency: its latencies in the stage at sketch resolution (one row per device, zeros for
            a device without latencies); None when the arm's latencies are not all known so.
        base_latency: its baseline latencies, the same way.
    """

    inferences: np.ndarray = field(default_factory=lambda: _NONE)
    errors: np.ndarray = field(default_factory=lambda: _NONE)
    labelled: np.ndarray = field(default_factory=lambda: _NONE)
    wrong: np.ndarray = field(default_factory=lambda: _NONE)
    base_inferences: np.ndarray = field(default_factory=lambda: _NONE)
    base_errors: np.ndarray = field(default_factory=lambda: _NONE)
    base_labelled: np.ndarray = field(default_factory=lambda: _NONE)
    base_wrong: np.ndarray = field(default_factory=lambda: _NONE)
    latency: DeviceLatencies | None = None
    base_latency: DeviceLatencies | None = None

    @classmethod
    def from_rows(cls, latency: DeviceLatencies | None = None, base_latency: DeviceLatencies | None = None,
                  **columns: Sequence[float]) -> DeviceTable:
        """A table from per-device columns (names in :data:`COUNTS`; missing ones are zeros)."""
        unknown = set(columns) - set(COUNTS)
        if unknown:
            raise ValueError(f"unknown device table column(s): {', '.join(sorted(unknown))}")
        devices = max((len(v) for v in columns.values()), default=0)
        arrays = {name: np.asarray(columns.get(name, np.zeros(devices)), dtype=float) for name in COUNTS}
        return cls(**arrays, latency=latency, base_latency=base_latency)

    @property
    def devices(self) -> int:
        return len(self.inferences)

    def __add__(self, other: DeviceTable) -> DeviceTable:
        if not isinstance(other, DeviceTable):
            return NotImplemented
        arrays = {name: np.concatenate([getattr(self, name), getattr(other, name)]) for name in COUNTS}
        latencies = {name: _stacked(getattr(self, name), self.devices, getattr(other, name), other.devices)
                     for name in LATENCIES}
        return DeviceTable(**arrays, **latencies)

    def problems(self) -> list[str]:
        """Inconsistencies, as sentences; empty when the table is usable."""
        return list(self._problems)

    @cached_property
    def _problems(self) -> tuple[str, ...]:
        """Computed once: every guard asks (``ArmWindow.problems``)."""
        return tuple(self._find_problems())

    def _find_problems(self) -> list[str]:
        found = [f"device table column {name} has {len(getattr(self, name))} rows, expected {self.devices}"
                 for name in COUNTS if len(getattr(self, name)) != self.devices]
        if found:
            return found
        for name in COUNTS:
            if not np.all(getattr(self, name) >= 0):  # also catches NaN
                found.append(f"device table column {name} has a negative or missing value")
        for events, trials in (("errors", "inferences"), ("wrong", "labelled"),
                               ("base_errors", "base_inferences"), ("base_wrong", "base_labelled")):
            if np.any(getattr(self, events) > getattr(self, trials)):
                found.append(f"device table: a device has more {events} than {trials}")
        for name in LATENCIES:
            matrix = getattr(self, name)
            if matrix is not None and matrix.devices != self.devices:
                found.append(f"device table {name} has {matrix.devices} rows, expected {self.devices}")
            elif matrix is not None and matrix.has_negative:
                found.append(f"device table {name} has a negative count")
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the inverse of :meth:`from_dict`)."""
        out: dict[str, Any] = {name: getattr(self, name).tolist() for name in COUNTS}
        for name in LATENCIES:
            matrix = getattr(self, name)
            if matrix is not None:
                out[name] = {"offset": matrix.offset, "counts": matrix.counts.tolist()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceTable:
        """Build from :meth:`to_dict`'s output.

        Raises:
            ValueError: a field is unknown or of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"device table must be an object, got {type(data).__name__}")
        unknown = set(data) - {*COUNTS, *LATENCIES}
        if unknown:
            raise ValueError(f"unknown device table field(s): {', '.join(sorted(unknown))}")
        columns = {}
        for name in COUNTS:
            values = data.get(name, [])
            if not isinstance(values, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"device table {name} must be a list of numbers")
            columns[name] = values
        latencies = {}
        for name in LATENCIES:
            given = data.get(name)
            if given is None:
                latencies[name] = None
                continue
            try:
                counts = np.asarray(given["counts"], dtype=np.int64)
                offset = int(given["offset"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"device table {name} must be {{offset, counts}}: {exc}") from None
            if counts.ndim != 2:
                raise ValueError(f"device table {name} counts must be a matrix")
            latencies[name] = DeviceLatencies(offset, counts)
        return cls.from_rows(**latencies, **columns)


def _stacked(a: DeviceLatencies | None, rows_a: int, b: DeviceLatencies | None,
             rows_b: int) -> DeviceLatencies | None:
    """Two arms' aligned latency rows stacked; an arm with devices but no matrix makes the
    result unknown (None), an arm without devices adds nothing."""
    if rows_b == 0:
        return a
    if rows_a == 0:
        return b
    if a is None or b is None:
        return None
    low = min(a.offset, b.offset)
    high = max(a.offset + a.counts.shape[1], b.offset + b.counts.shape[1])
    out = np.zeros((rows_a + rows_b, high - low), dtype=np.int64)
    out[:rows_a, a.offset - low:a.offset - low + a.counts.shape[1]] = a.counts
    out[rows_a:, b.offset - low:b.offset - low + b.counts.shape[1]] = b.counts
    return DeviceLatencies(low, out)
