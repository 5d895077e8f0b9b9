"""ONNX runner on onnxruntime's CPU execution provider (numpy + onnxruntime only, never torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.runtimes.base import RuntimeUnavailable

#: onnxruntime tensor type strings → numpy dtypes for the inputs a session may expect.
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxRunner:
    """A model loaded in an onnxruntime ``InferenceSession`` on CPU.

    Attributes:
        runtime: always ``onnxruntime``.
        version: the onnxruntime package version.
        input_names: input names in the model's positional order.

    Example:
        >>> runner = OnnxRunner(Path("model.onnx"), ["image"], threads=1)
        >>> (logits,) = runner.run({"image": batch})
    """

    runtime = "onnxruntime"

    def __init__(self, path: Path, input_names: Sequence[str], threads: int | None = None) -> None:
        """Load ``path``.

        Args:
            path: the ``.onnx`` file.
            input_names: input names in positional order; a feed whose name the model does not
                know is matched to the model's input at the same position.
            threads: intra-op threads; ``None`` lets onnxruntime choose.

        Raises:
            RuntimeUnavailable: onnxruntime is not installed.
        """
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime)") from err
        self.version: str = ort.__version__
        self.input_names = list(input_names)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [(i.name, _ORT_DTYPES.get(i.type)) for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch.

        Args:
            feeds: arrays keyed by input name; each is cast to the dtype the model expects.

        Returns:
            The outputs in the model's output order; floating outputs as float32.
        """
        session_feeds = {}
        for position, (name, dtype) in enumerate(self._inputs):
            value = self._feed_for(name, position, feeds)
            array = np.asarray(value)
            session_feeds[name] = array.astype(dtype, copy=False) if dtype is not None else array
        outputs = self._session.run(self._outputs, session_feeds)
        return [
            np.asarray(o, dtype=np.float32) if np.asarray(o).dtype.kind == "f" else np.asarray(o)
            for o in outputs
        ]

    def _feed_for(self, name: str, position: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The feed for the model input ``name``: by name, else by position in input_names."""
        if name in feeds:
            return feeds[name]
        if position < len(self.input_names) and self.input_names[position] in feeds:
            return feeds[self.input_names[position]]
        raise KeyError(f"no feed for model input {name!r} (got {sorted(feeds)})")
