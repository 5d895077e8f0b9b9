"""Calibration and evaluation data: ``.npz`` files keyed by input name, labels under ``labels``.

Arrays stack samples along axis 0. With an input spec of shape ``(B, *rest)`` an array must be
shaped ``(N, *rest)``; it is cut into ``N // B`` model-sized samples.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import DataError
from converter.specs import TensorSpec

LABELS = "labels"


@dataclass
class SampleSet:
    """Named input arrays (and optional labels), cut into samples shaped like the specs."""

    specs: list[TensorSpec]
    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def batch(self) -> int:
        return self.specs[0].shape[0]

    def __len__(self) -> int:
        rows = len(next(iter(self.arrays.values())))
        return rows // self.batch

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """The ``index``-th sample: one array per input, shaped and typed as its spec."""
        lo, hi = index * self.batch, (index + 1) * self.batch
        return {s.name: self.arrays[s.name][lo:hi] for s in self.specs}

    def sample_labels(self, index: int) -> np.ndarray | None:
        if self.labels is None:
            return None
        return self.labels[index * self.batch : (index + 1) * self.batch]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self.sample(i) for i in range(len(self)))

    def head(self, count: int) -> SampleSet:
        """The first ``count`` samples (fewer if the set is smaller)."""
        rows = min(count, len(self)) * self.batch
        labels = None if self.labels is None else self.labels[:rows]
        return SampleSet(self.specs, {k: v[:rows] for k, v in self.arrays.items()}, labels)


def load_samples(path: Path | str, specs: list[TensorSpec], role: str) -> SampleSet:
    """Read and check an ``.npz`` of samples for ``specs``.

    Args:
        path: the ``.npz`` file.
        specs: the model's input specs.
        role: ``calibration`` or ``evaluation``, used in error messages.

    Raises:
        DataError: the file is missing or not an npz, an input is missing, a shape or dtype
            does not fit its spec, arrays disagree on the sample count, or a float array
            holds NaN or Inf.
    """
    path = Path(path)
    arrays = _read_npz(path, role)
    checked: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in arrays:
            raise DataError(
                f"{role} data {path.name}: no array {spec.name!r} (has {', '.join(sorted(arrays))})"
            )
        checked[spec.name] = _check_array(arrays[spec.name], spec, f"{role} data {path.name}")
    rows = {name: len(a) for name, a in checked.items()}
    if len(set(rows.values())) != 1:
        raise DataError(f"{role} data {path.name}: inputs differ in sample count: {rows}")
    count = next(iter(rows.values()))
    batch = specs[0].shape[0]
    if count < batch:
        raise DataError(f"{role} data {path.name}: {count} rows, fewer than one batch of {batch}")
    labels = arrays.get(LABELS)
    if labels is not None and len(labels) != count:
        raise DataError(
            f"{role} data {path.name}: {len(labels)} labels for {count} samples"
        )
    if labels is not None and labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise DataError(f"{role} data {path.name}: labels hold NaN or Inf")
    return SampleSet(list(specs), checked, labels)


def _read_npz(path: Path, role: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{role} data {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{role} data {str(path)!r} is not a readable .npz: {err}") from None


def _check_array(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    if tuple(array.shape[1:]) != spec.shape[1:]:
        want = "x".join(str(d) for d in ("N", *spec.shape[1:]))
        raise DataError(
            f"{where}: {spec.name!r} has shape {tuple(array.shape)}, expected {want} for "
            f"input spec {spec.name}:{'x'.join(map(str, spec.shape))}:{spec.dtype}"
        )
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(array), -1).any(axis=1))[0][0])
            raise DataError(
                f"{where}: {spec.name!r} holds {int(bad.sum())} NaN/Inf values "
                f"(first in sample {first})"
            )
    if spec.is_integer and array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"{where}: {spec.name!r} is {spec.dtype} but holds fractional values")
    elif not spec.is_integer and array.dtype.kind not in "fiub":
        raise DataError(f"{where}: {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
    return np.ascontiguousarray(array.astype(spec.np_dtype, copy=False))
