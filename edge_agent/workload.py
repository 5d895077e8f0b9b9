"""Replay of recorded inputs as live traffic, so fleets can be simulated with real models.

The npz holds one array per model input (samples on axis 0, keyed by input name; a single
unnamed array is used for a single-input model) and optionally ``labels``. Samples go through
:meth:`Agent.predict` at a fixed rate, cycling through the file, with their labels so accuracy
is reported.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("edgeship.agent")


class Replay:
    """Feed ``path`` to ``agent`` at ``rate_per_second`` batches until :meth:`stop`.

    Args:
        agent: the running :class:`edge_agent.agent.Agent`.
        path: the npz file.
        rate_per_second: batches per second.
    """

    def __init__(self, agent, path: Path, rate_per_second: float) -> None:
        self.agent = agent
        self.rate_per_second = rate_per_second
        with np.load(path, allow_pickle=False) as npz:
            self.arrays = {name: npz[name] for name in npz.files}
        self.labels = self.arrays.pop("labels", None)
        if not self.arrays:
            raise ValueError(f"{path} holds no input arrays")
        self.rows = min(len(a) for a in self.arrays.values())
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeship-replay", daemon=True)

    def start(self) -> Replay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def feeds(self, input_names: list[str], batch: int, index: int) -> tuple[dict[str, np.ndarray], object]:
        """Batch number ``index`` (cycling) for a model with these inputs, and its labels."""
        start = (index * batch) % max(self.rows - batch + 1, 1)
        if len(input_names) == 1 and input_names[0] not in self.arrays and len(self.arrays) == 1:
            (only,) = self.arrays.values()
            feeds = {input_names[0]: only[start : start + batch]}
        else:
            missing = [n for n in input_names if n not in self.arrays]
            if missing:
                raise ValueError(f"workload has no array for input(s) {missing}; "
                                 f"it has {sorted(self.arrays)}")
            feeds = {n: self.arrays[n][start : start + batch] for n in input_names}
        labels = self.labels[start : start + batch] if self.labels is not None else None
        return feeds, labels

    def _run(self) -> None:
        from edge_agent.agent import InferenceError, NoModel

        period = 1.0 / self.rate_per_second
        due = time.monotonic()
        while not self._stop.is_set():
            model = self.agent.current
            if model is not None:
                shape = model.release.manifest["task"]["inputs"][0]["shape"]
                batch = int(shape[0]) if shape else 1
                try:
                    feeds, labels = self.feeds(model.input_names, max(batch, 1), self.sent)
                    self.agent.predict(feeds, label=labels)
                    self.sent += 1
                except (NoModel, InferenceError) as err:
                    log.debug("replay: %s", err)
                except ValueError as err:
                    log.error("replay stopped: %s", err)
                    return
            due += period
            delay = due - time.monotonic()
            if delay < -1.0:  # fell behind (slow model): do not burst to catch up
                due = time.monotonic()
            self._stop.wait(max(0.0, delay))
