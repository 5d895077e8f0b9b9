"""TFLite models on LiteRT (``ai_edge_litert``), with ``tflite_runtime`` / TensorFlow fallbacks.

TFLite renames a model's inputs and outputs (``args_0``, ``output_0``), so the runner feeds
inputs by position and returns outputs in the model's original order. Full-integer models
(int8/uint8 input or output tensors) are quantized and dequantized here:
``q = clamp(round(x / scale) + zero_point)`` on the way in, ``(q - zero_point) * scale`` on the
way out. This module never imports torch: it runs on devices.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.runtimes.base import RuntimeUnavailable

_SUFFIX = re.compile(r"_(\d+)$")
_QUANTIZED_DTYPES = (np.int8, np.uint8, np.int16)


def _load_interpreter() -> tuple[Any, str]:
    """The first interpreter class found, with the version of the package providing it.

    Raises:
        RuntimeUnavailable: none of ai_edge_litert, tflite_runtime or tensorflow is installed.
    """
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow {tf.__version__}"
    except ImportError:
        raise RuntimeUnavailable(
            "no TFLite interpreter: install ai-edge-litert (or tflite-runtime)"
        ) from None


def _positional(details: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Signature tensors in positional order: by the ``_N`` suffix when every name has one."""
    names = list(details)
    if names and all(_SUFFIX.search(n) for n in names):
        names.sort(key=lambda n: int(_SUFFIX.search(n).group(1)))  # type: ignore[union-attr]
    return [dict(details[n], signature_name=n) for n in names]


def signature_key(interpreter: Any) -> str | None:
    """The signature the runner uses: ``serving_default``, else the first; ``None`` if none."""
    signatures = interpreter.get_signature_list()
    if not signatures:
        return None
    return "serving_default" if "serving_default" in signatures else next(iter(signatures))


def signature_io(interpreter: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input and output tensor details of a loaded interpreter, in the model's order.

    Uses the first signature (litert-torch writes ``serving_default`` with ``args_N`` inputs and
    ``output_N`` outputs; the suffix is the position in the PyTorch model). Models without a
    signature use the subgraph's own input/output order.

    Args:
        interpreter: a TFLite ``Interpreter`` with tensors allocated.

    Returns:
        ``(inputs, outputs)``: lists of tensor detail dicts (``index``, ``dtype``, ``shape``,
        ``quantization``, ...); each has ``signature_name`` when the model has a signature.
    """
    key = signature_key(interpreter)
    if key is None:
        return interpreter.get_input_details(), interpreter.get_output_details()
    runner = interpreter.get_signature_runner(key)
    return _positional(runner.get_input_details()), _positional(runner.get_output_details())


def tensor_quantization(detail: dict[str, Any]) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of an integer-quantized tensor, or ``None`` for a plain one."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale or np.dtype(detail["dtype"]).type not in _QUANTIZED_DTYPES:
        return None
    return float(scale), int(zero_point)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float to integer: ``clamp(round(x / scale) + zero_point)`` in the range of ``dtype``."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer to float: ``(q - zero_point) * scale`` as float32."""
    return ((q.astype(np.int32) - zero_point) * np.float32(scale)).astype(np.float32)


def _override(entries: list[dict[str, Any]] | None, i: int, name: str | None) -> tuple | None:
    """Scale and zero point for tensor ``i`` from the manifest's io block, if it gives them."""
    if not entries:
        return None
    match = [e for e in entries if name is not None and e.get("name") == name]
    entry = match[0] if match else (entries[i] if i < len(entries) else None)
    if not entry or entry.get("scale") is None:
        return None
    return float(entry["scale"]), int(entry.get("zero_point") or 0)


def _in_named_order(outputs: list[dict[str, Any]], names: Sequence[str] | None) -> list[dict[str, Any]]:
    """``outputs`` reordered to ``names`` when the signature names them all; else unchanged."""
    by_name = {d.get("signature_name"): d for d in outputs}
    if names and len(names) == len(outputs) and set(names) == set(by_name):
        return [by_name[n] for n in names]
    return outputs


class LiteRTRunner:
    """A ``.tflite`` model loaded once and run many times.

    Attributes:
        runtime: ``litert``.
        version: interpreter package and version, e.g. ``ai-edge-litert 2.3.0``.
        input_names: our input names, in the model's positional order.

    Example:
        >>> runner = LiteRTRunner(Path("model.tflite"), ["input_ids", "attention_mask"])
        >>> logits, = runner.run({"input_ids": ids, "attention_mask": mask})
    """

    runtime = "litert"

    def __init__(
        self,
        path: Path | str,
        input_names: Sequence[str],
        io: dict[str, list[dict[str, Any]]] | None = None,
        threads: int | None = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
        """Load ``path`` and allocate its tensors.

        Args:
            path: the ``.tflite`` file.
            input_names: input names in the model's positional order.
            io: the manifest's ``io`` block; its scales and zero points override the ones
                stored in the model.
            threads: interpreter threads; ``None`` lets the runtime choose.
            output_names: output names in the model's order. A model that returns a dict gets
                signature outputs named after its keys (sorted by the signature, not in the
                model's order): when the names match, outputs come back in this order.

        Raises:
            RuntimeUnavailable: no TFLite interpreter is installed.
            ValueError: the model has a different number of inputs than ``input_names``.
        """
        interpreter_cls, self.version = _load_interpreter()
        self.input_names = list(input_names)
        self._interpreter = interpreter_cls(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        inputs, outputs = signature_io(self._interpreter)
        outputs = _in_named_order(outputs, output_names)
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"{path}: model has {len(inputs)} inputs, expected {len(self.input_names)} "
                f"({', '.join(self.input_names)})"
            )
        io = io or {}
        self._inputs = [
            (d["index"], np.dtype(d["dtype"]), tuple(int(s) for s in d["shape"]),
             _override(io.get("inputs"), i, n) or tensor_quantization(d))
            for i, (d, n) in enumerate(zip(inputs, self.input_names, strict=True))
        ]
        self._outputs = [
            (d["index"], _override(io.get("outputs"), i, None) or tensor_quantization(d))
            for i, d in enumerate(outputs)
        ]

    def _prepare(self, value: np.ndarray, dtype: np.dtype, quant: tuple | None) -> np.ndarray:
        """One feed as the tensor wants it: quantized (float feeds only) or cast."""
        value = np.asarray(value)
        if quant is not None and value.dtype.kind == "f":
            return quantize(value, quant[0], quant[1], dtype)
        return np.ascontiguousarray(value, dtype=dtype)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch.

        Args:
            feeds: arrays keyed by input name. Float feeds of a quantized input are quantized;
                integer feeds are cast to the tensor's dtype (int64 token ids to int32).

        Returns:
            float32 arrays in the model's output order (integer outputs dequantized).

        Raises:
            KeyError: an input is missing from ``feeds``.
        """
        values = [
            self._prepare(feeds[name], dtype, quant)
            for name, (_, dtype, _, quant) in zip(self.input_names, self._inputs, strict=True)
        ]
        if any(v.shape != spec[2] for v, spec in zip(values, self._inputs, strict=True)):
            self._resize([v.shape for v in values])
        interp = self._interpreter
        for value, (index, *_) in zip(values, self._inputs, strict=True):
            interp.set_tensor(index, value)
        interp.invoke()
        return [self._read(index, quant) for index, quant in self._outputs]

    def _resize(self, shapes: list[tuple[int, ...]]) -> None:
        """Resize the inputs (a new batch size) and reallocate; later runs reuse the result."""
        for (index, *_), shape in zip(self._inputs, shapes, strict=True):
            self._interpreter.resize_tensor_input(index, list(shape))
        self._interpreter.allocate_tensors()
        self._inputs = [
            (index, dtype, tuple(shape), quant)
            for (index, dtype, _, quant), shape in zip(self._inputs, shapes, strict=True)
        ]

    def _read(self, index: int, quant: tuple | None) -> np.ndarray:
        value = self._interpreter.get_tensor(index)
        if quant is not None:
            return dequantize(value, quant[0], quant[1])
        return value.astype(np.float32, copy=False)
