"""The golden probe set: a few eval inputs with reference outputs (and labels).

A device runs a new model on these inputs before it swaps and compares with the reference.
File layout (``golden.npz``): ``input:<name>`` and ``output:<name>`` arrays with the samples
stacked on axis 0, ``labels`` when the eval set has them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from converter.data import SampleSet
from converter.reference import Reference

GOLDEN_FILE = "golden.npz"


def write_golden(directory: Path, samples: SampleSet, reference: Reference, count: int) -> dict:
    """Write the first ``count`` samples; return the manifest's ``golden`` entry."""
    head = samples.head(count)
    rows = len(head) * head.batch
    arrays = {f"input:{name}": array for name, array in head.arrays.items()}
    for spec, output in zip(reference.output_specs, reference.outputs, strict=True):
        arrays[f"output:{spec.name}"] = output[:rows].astype(np.float32)
    if head.labels is not None:
        arrays["labels"] = head.labels
    path = Path(directory) / GOLDEN_FILE
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return {"file": GOLDEN_FILE, "sha256": sha256_file(path), "count": len(head)}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
