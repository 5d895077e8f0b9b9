"""MNN models (``.mnn``) on MNN's runtime (the ``mnn`` package), through its Module API.

MNN keeps the ONNX export's input and output names, so inputs are fed by name (by position when a
name is missing) and outputs come back in the order the model lists them. MNN has no int64
tensors: the converter turns int64 inputs (token ids, masks) into int32, and the runner casts
feeds to the type each input declares. Tensors that MNN lays out in its packed ``NC4HW4`` form
are converted back to ``NCHW`` before they are read. This module never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.runtimes.base import RuntimeUnavailable


class MNNRunner:
    """A ``.mnn`` model loaded once on MNN's CPU backend and run many times.

    Attributes:
        runtime: ``mnn``.
        version: the MNN version (``MNN.version()``, the ``mnn`` package's version).
        input_names: input names in the model's positional order.
        output_names: output names in the model's output order.
    """

    runtime = "mnn"

    def __init__(self, path: Path, input_names: Sequence[str], threads: int | None = None) -> None:
        """Load ``path``.

        Args:
            path: the ``.mnn`` file.
            input_names: our input names, in the model's positional order.
            threads: CPU threads; ``None`` lets MNN choose (4).

        Raises:
            RuntimeUnavailable: the ``mnn`` package is not installed.
            ValueError: the file is not an MNN model, or its inputs are not ``input_names``.
        """
        try:
            import MNN
            import MNN.expr as expr
            import MNN.nn as nn
        except ImportError:
            raise RuntimeUnavailable("mnn is not installed (pip install mnn)") from None
        self._expr = expr
        self.version: str = MNN.version()
        self.input_names = list(input_names)
        names = _model_io(nn, Path(path))
        model_inputs, self.output_names = names
        if sorted(model_inputs) != sorted(self.input_names):
            raise ValueError(f"{Path(path).name}: model inputs are {model_inputs}, "
                             f"expected {self.input_names}")
        config: dict[str, Any] = {"backend": "CPU", "precision": "high"}
        if threads is not None:
            config["numThread"] = int(threads)
        manager = nn.create_runtime_manager((config,))
        self._module = nn.load_module_from_file(
            str(path), self.input_names, self.output_names, runtime_manager=manager
        )
        info = self._module.get_info()["inputs"]
        self._inputs = [(name, var.dtype, var.data_format)
                        for name, var in zip(self.input_names, info, strict=True)]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; floating outputs as float32 arrays, in the model's output order."""
        expr = self._expr
        variables = []
        for position, (name, dtype, layout) in enumerate(self._inputs):
            value = feeds.get(name)
            if value is None and position < len(self.input_names):
                value = feeds.get(self.input_names[position])
            if value is None:
                raise KeyError(f"no feed for model input {name!r} (got {sorted(feeds)})")
            integer = dtype == expr.int
            array = np.ascontiguousarray(value, dtype=np.int32 if integer else np.float32)
            variables.append(expr.const(array, list(array.shape), layout, dtype))
        outputs = self._module.forward(variables)
        return [_to_numpy(expr, out) for out in outputs]


def _model_io(nn: Any, path: Path) -> tuple[list[str], list[str]]:
    """``(input names, output names)`` stored in the model file."""
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    try:
        info = nn.load_module_from_file(str(path), [], []).get_info()
    except Exception as err:  # MNN raises bare exceptions on a file it cannot parse
        raise ValueError(f"{path.name}: not an MNN model ({err})") from None
    return list(info["inputNames"]), list(info["outputNames"])


def _to_numpy(expr: Any, var: Any) -> np.ndarray:
    """An output variable as a numpy array in ``NCHW`` order (float32 when floating)."""
    if var.data_format == expr.NC4HW4:
        var = expr.convert(var, expr.NCHW)
    array = np.array(var.read(), copy=True)
    return array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array
