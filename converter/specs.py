"""Input and output tensor specs: ``NAME:SHAPE:DTYPE`` as given on the command line."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from converter.errors import InputSpecError

#: dtypes an input may have, by the name used in specs and in the manifest.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("float32"),
    "float16": np.dtype("float16"),
    "int64": np.dtype("int64"),
    "int32": np.dtype("int32"),
    "int8": np.dtype("int8"),
    "uint8": np.dtype("uint8"),
    "bool": np.dtype("bool"),
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor with a static shape (batch dimension included) and a dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def is_integer(self) -> bool:
        return self.np_dtype.kind in "iub"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


def parse_input_spec(text: str) -> TensorSpec:
    """Parse ``NAME:SHAPE:DTYPE``, e.g. ``image:1x1x8x8:float32`` or ``ids:1,128:int64``.

    Raises:
        InputSpecError: the text does not have three parts, a dimension is not a positive
            integer, or the dtype is not one of :data:`DTYPES`.
    """
    parts = text.split(":")
    if len(parts) != 3:
        raise InputSpecError(f"input spec {text!r}: expected NAME:SHAPE:DTYPE, e.g. x:1x3x32x32:float32")
    name, shape_text, dtype = (p.strip() for p in parts)
    if not _NAME.match(name):
        raise InputSpecError(f"input spec {text!r}: bad name {name!r}")
    dims = [d for d in re.split(r"[x,×]", shape_text.strip("()[] ")) if d.strip()]
    try:
        shape = tuple(int(d) for d in dims)
    except ValueError:
        raise InputSpecError(f"input spec {text!r}: shape {shape_text!r} is not integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise InputSpecError(f"input spec {text!r}: shape {shape_text!r} needs positive dimensions")
    if dtype not in DTYPES:
        raise InputSpecError(
            f"input spec {text!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}"
        )
    return TensorSpec(name, shape, dtype)
