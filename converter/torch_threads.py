"""PyTorch's thread count for the reference run: the faster of its default and one thread.

The reference runs one sample at a time. A model of many small ops (the MobileNetV2-style
benchmark CNN: 6 ms a sample on one thread, 40 ms on two, on a loaded 2-core host) spends the
second thread's time waiting; a transformer's larger MatMuls gain from it (19 ms against 30).
Timing three samples each way decides.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from converter.reference import run_model
from converter.specs import TensorSpec

#: samples timed per thread count.
TRIAL_SAMPLES = 3


@contextlib.contextmanager
def fastest_threads(model: Any, inputs: list[TensorSpec],
                    samples: list[dict[str, np.ndarray]]) -> Iterator[int]:
    """Run the block with the faster thread count for ``model`` on ``samples`` (restored after)."""
    import torch

    default = torch.get_num_threads()
    chosen = default
    if default > 1 and samples:
        chosen = min((default, 1), key=lambda n: _seconds(model, inputs, samples, n))
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(default)


def _seconds(model: Any, inputs: list[TensorSpec], samples: list[dict[str, np.ndarray]],
             threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    run_model(model, inputs, samples[0])  # warm-up
    started = time.perf_counter()
    for sample in samples[:TRIAL_SAMPLES]:
        run_model(model, inputs, sample)
    return time.perf_counter() - started
