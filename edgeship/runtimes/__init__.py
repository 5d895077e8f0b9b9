"""Model runtimes behind one interface: ONNX (onnxruntime), TFLite (LiteRT), CoreML.

The converter validates every variant through these same runners, so what passed the gate is
what a device executes. Each runner lives in its own module and imports its runtime lazily.

Example:
    >>> runner = open_runner(Path("model.onnx"), "onnx", input_names=["image"])
    >>> outputs = runner.run({"image": batch})   # list of arrays, in the model's output order
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeship.runtimes.base import Runner, RuntimeUnavailable

__all__ = ["Runner", "RuntimeUnavailable", "open_runner"]


def open_runner(
    path: Path,
    format: str,
    input_names: Sequence[str],
    io: dict[str, list[dict[str, Any]]] | None = None,
    threads: int | None = None,
    output_names: Sequence[str] | None = None,
) -> Runner:
    """Load ``path`` on the runtime for ``format``.

    Args:
        path: the artifact file.
        format: ``onnx``, ``tflite``, ``coreml``, ``openvino``, ``mnn`` or ``executorch``.
        input_names: input names in the model's positional order (runtimes that rename inputs,
            such as TFLite, are fed by position).
        io: the manifest's ``io`` block for full-integer models (scale and zero point per
            tensor); the runner quantizes inputs and dequantizes outputs with it.
        threads: intra-op threads; ``None`` lets the runtime choose.
        output_names: output names in the model's order; runtimes that key outputs by name
            (TFLite signatures of dict-returning models) return them in this order.

    Raises:
        RuntimeUnavailable: no runtime for this format on this host.
        ValueError: unknown format.
    """
    if format == "onnx":
        from edgeship.runtimes.onnx import OnnxRunner
        from edgeship.runtimes.packed import PackedOnnxRunner, is_packed

        if is_packed(path):  # ternary weights shipped 2 bits each, unpacked here
            return PackedOnnxRunner(path, input_names, threads=threads)
        return OnnxRunner(path, input_names, threads=threads)
    if format == "tflite":
        from edgeship.runtimes.litert import LiteRTRunner

        return LiteRTRunner(path, input_names, io=io, threads=threads, output_names=output_names)
    if format == "coreml":
        from edgeship.runtimes.coreml import CoreMLRunner

        return CoreMLRunner(path, input_names)
    if format == "openvino":
        from edgeship.runtimes.openvino import OpenVINORunner

        return OpenVINORunner(path, input_names, threads=threads)
    if format == "mnn":
        from edgeship.runtimes.mnn import MNNRunner

        return MNNRunner(path, input_names, threads=threads)
    if format == "executorch":
        from edgeship.runtimes.executorch import ExecuTorchRunner

        return ExecuTorchRunner(path, input_names, threads=threads)
    raise ValueError(f"unknown model format {format!r}")
