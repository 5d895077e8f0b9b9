"""ExecuTorch programs (``.pte``) on ExecuTorch's Python runtime (``executorch.runtime``).

The runtime's Python bindings take and return torch tensors, so this runner imports torch
(inside the class, like every runner imports its runtime): on a host it needs the ``executorch``
package and the torch it was built for. That is why no device agent announces ExecuTorch: a
``.pte`` ships to apps and microcontrollers that embed the C++ runtime. The converter uses this
runner to validate what it built. Feeds are cast to the dtype each input declares in the program.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.runtimes.base import RuntimeUnavailable

# ExecuTorch ScalarType names (TensorInfo.dtype) → numpy dtypes.
_DTYPES = {"Float": np.float32, "Double": np.float64, "Long": np.int64, "Int": np.int32,
           "Bool": np.bool_, "Half": np.float16, "Byte": np.uint8, "Char": np.int8}


class ExecuTorchRunner:
    """A ``.pte`` program's ``forward`` method loaded once and run many times.

    Attributes:
        runtime: ``executorch``.
        version: the ``executorch`` package version.
        input_names: our input names, in the program's positional order.
    """

    runtime = "executorch"

    def __init__(self, path: Path, input_names: Sequence[str], threads: int | None = None) -> None:
        """Load ``path``.

        Args:
            path: the ``.pte`` file.
            input_names: input names in the model's positional order (a program's inputs are
                positional).
            threads: XNNPACK threads; ``None`` keeps the runtime's default.

        Raises:
            RuntimeUnavailable: ``executorch`` (or the torch it needs) is not installed.
            ValueError: the program does not take ``len(input_names)`` inputs.
        """
        try:
            from importlib.metadata import version

            import torch
            from executorch.runtime import Runtime
        except ImportError as err:
            raise RuntimeUnavailable(f"executorch is not installed ({err})") from None
        self._torch = torch
        self.version: str = version("executorch")
        self.input_names = list(input_names)
        if threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        self._method = Runtime.get().load_program(Path(path)).load_method("forward")
        meta = self._method.metadata
        if meta.num_inputs() != len(self.input_names):
            raise ValueError(f"{Path(path).name}: the program takes {meta.num_inputs()} inputs, "
                             f"expected {self.input_names}")
        self._dtypes = [_numpy_dtype(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; floating outputs as float32 arrays, in the program's output order."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing inputs: {', '.join(missing)}")
        tensors = [self._torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=dtype))
                   for name, dtype in zip(self.input_names, self._dtypes, strict=True)]
        outputs = self._method.execute(tensors)
        arrays = [out.detach().numpy() for out in outputs]
        return [a.astype(np.float32, copy=False) if a.dtype.kind == "f" else a for a in arrays]


def _numpy_dtype(info: Any) -> type:
    name = str(info.dtype()).rsplit(".", 1)[-1]
    return _DTYPES.get(name, np.float32)
