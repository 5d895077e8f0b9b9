"""Shadow mode: the candidate runs beside the current model on a share of live inputs.

The answer always comes from the current model; the candidate's outputs are only compared with
it (top-1 agreement for classification, cosine otherwise, and the largest absolute difference)
and counted in the current window as ``shadow_samples`` / ``shadow_agree``. The comparison runs
on a worker thread behind a small queue, so ``predict`` does not wait for the candidate; when
the queue is full the sample is skipped, never the caller slowed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading

import numpy as np

from edge_agent.golden import AGREEMENT_COSINE
from edge_agent.model import LoadedModel
from edge_agent.window import WindowKey, WindowSet
from edgeship.contract.fidelity import per_sample_cosine, top1

log = logging.getLogger("edgeship.agent")
QUEUE_SIZE = 64


class ShadowRunner:
    """Holds the shadow candidate (if any) and compares it with the current model's answers."""

    def __init__(self, windows: WindowSet) -> None:
        self.windows = windows
        self.model: LoadedModel | None = None
        self.sample_share = 0.0
        self.blobs: tuple[str, ...] = ()  # its files in the model store, kept from collection
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    def runs(self, sha256: str) -> bool:
        model = self.model
        return model is not None and model.release.sha256 == sha256

    def set(self, model: LoadedModel, sample_share: float, blobs: tuple[str, ...] = ()) -> None:
        self.model, self.sample_share, self.blobs = model, min(max(sample_share, 0.0), 1.0), blobs
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgeship-shadow", daemon=True)
            self._thread.start()

    def clear(self) -> None:
        self.model, self.sample_share, self.blobs = None, 0.0, ()

    def submit(self, key: WindowKey, feeds: dict[str, np.ndarray], outputs: list[np.ndarray]) -> None:
        with contextlib.suppress(queue.Full):  # busy: skip this sample rather than slow the caller
            self._queue.put_nowait((key, feeds, outputs))

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def compare(self, key: WindowKey, feeds: dict[str, np.ndarray], outputs: list[np.ndarray]) -> None:
        """Run the candidate on ``feeds`` and count agreement per row with ``outputs``."""
        model = self.model
        if model is None:
            return
        try:
            candidate = model.run(feeds)
        except Exception as err:  # a failing candidate disagrees; the caller already has its answer
            log.debug("shadow candidate failed: %s", err)
            for _ in range(len(outputs[0])):
                self.windows.record_shadow(key, False, float("inf"))
            return
        ours, theirs = np.asarray(outputs[0]), np.asarray(candidate[0]).reshape(np.shape(outputs[0]))
        if model.classification:
            agree = top1(ours) == top1(theirs)
        else:
            agree = per_sample_cosine([ours], [theirs]) >= AGREEMENT_COSINE
        distance = np.abs(ours.reshape(len(ours), -1).astype(np.float64)
                          - theirs.reshape(len(theirs), -1)).max(axis=1)
        for row_agrees, row_distance in zip(agree, distance, strict=True):
            self.windows.record_shadow(key, bool(row_agrees), float(row_distance))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.compare(*item)
