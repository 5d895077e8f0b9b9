"""What every runtime runner is: the :class:`Runner` protocol and the error of a missing runtime.

A leaf module: the runners (``onnx``, ``litert``, ``coreml``) import it, and the package's
:func:`~edgeship.runtimes.open_runner` dispatches to them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class RuntimeUnavailable(RuntimeError):
    """The runtime for this format is not installed or cannot run on this host."""


class Runner(Protocol):
    """A loaded model ready for inference.

    Attributes:
        runtime: ``onnxruntime``, ``litert`` or ``coreml``.
        version: version of the runtime package that runs it.
    """

    runtime: str
    version: str

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch. ``feeds`` is keyed by input name with float/int arrays as specified
        in the manifest; outputs come back as float32 (dequantized) arrays in output order."""
        ...
