"""Ternary weights shipped 2 bits each and unpacked at load, for runtimes without 2-bit kernels.

A packed ONNX artifact (``<variant>.onnx.pack``) is a zip of stored (uncompressed) members:

* ``header.json``: ``{"scheme": SCHEME, "tensors": [{"name", "shape", "axis", "count",
  "codes", "scales"}]}``;
* ``model.onnx``: the graph, its packed initializers marked as external data;
* per packed tensor, ``t<i>.codes`` (2 bits per weight, four per byte, first weight in the low
  bits: ``00`` = 0, ``01`` = +1, ``10`` = -1) and ``t<i>.scales`` (little-endian float32, one per
  slice along ``axis``, the output channel).

Loading unpacks each tensor to float32 ``scale * code`` and hands it to onnxruntime as the
initializer (``SessionOptions.add_external_initializers``): the wire carries ~2 bits per
weight, the runtime keeps 32. Numpy and onnxruntime only, so the converter's validation and
the device agent unpack with the same code.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.runtimes.base import RuntimeUnavailable
from edgeship.runtimes.onnx import _ORT_DTYPES, OnnxRunner

#: the packing this module reads and writes; a header naming another is refused.
SCHEME = "edgeship.ternary-2bit/v1"
#: the runtime a packed variant names: onnxruntime behind this module's unpacking.
RUNTIME = "onnxruntime-packed"
#: file suffix of a packed ONNX artifact.
PACKED_SUFFIX = ".onnx.pack"
#: location the graph gives its packed initializers (never a file: the runner supplies them).
EXTERNAL_LOCATION = "edgeship-packed"
HEADER, MODEL = "header.json", "model.onnx"
_ZIP_MAGIC = b"PK\x03\x04"
#: code → weight sign; code 3 is invalid.
_DECODE = np.array([0, 1, -1], dtype=np.int8)


class PackedModelError(ValueError):
    """A packed artifact that does not follow :data:`SCHEME` (the message says what is wrong)."""


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Codes in {-1, 0, +1} (any shape) → uint8, four per byte, first in the low bits."""
    flat = np.asarray(codes).reshape(-1)
    if flat.size and not np.isin(flat, (-1, 0, 1)).all():
        raise ValueError("ternary codes must be -1, 0 or +1")
    two_bits = np.where(flat < 0, 2, flat).astype(np.uint8)
    padded = np.zeros(-(-flat.size // 4) * 4, dtype=np.uint8)
    padded[: flat.size] = two_bits
    quads = padded.reshape(-1, 4)
    return (quads[:, 0] | quads[:, 1] << 2 | quads[:, 2] << 4 | quads[:, 3] << 6).astype(np.uint8)


def unpack_codes(packed: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` codes of :func:`pack_codes`'s bytes, as int8 in {-1, 0, +1}.

    Raises:
        PackedModelError: too few bytes, or a code 3.
    """
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != -(-count // 4):
        raise PackedModelError(f"{packed.size} bytes hold {packed.size * 4} codes, need {count}")
    two_bits = np.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], axis=1).reshape(-1)[:count]
    if (two_bits == 3).any():
        raise PackedModelError("code 3 is not a ternary value")
    return _DECODE[two_bits]


def dequantize(codes: np.ndarray, scales: np.ndarray, shape: Sequence[int], axis: int) -> np.ndarray:
    """float32 ``scale[c] * code`` shaped ``shape`` (codes in its row-major order), with ``c``
    the index along ``axis``."""
    broadcast = [1] * len(shape)
    broadcast[axis] = -1
    values = codes.reshape(tuple(shape)).astype(np.float32) * scales.astype(np.float32).reshape(broadcast)
    return np.ascontiguousarray(values)


@dataclass
class PackedTensor:
    """One packed initializer: its name, shape, channel axis, codes and per-channel scales."""

    name: str
    shape: tuple[int, ...]
    axis: int
    packed: np.ndarray
    scales: np.ndarray

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))

    def unpack(self) -> np.ndarray:
        """The float32 tensor the runtime uses."""
        return dequantize(unpack_codes(self.packed, self.count), self.scales, self.shape, self.axis)


def is_packed(path: Path) -> bool:
    """Whether ``path`` is a packed artifact (a zip; an ONNX protobuf never starts with ``PK``)."""
    try:
        with Path(path).open("rb") as handle:
            return handle.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def write_packed(path: Path, model_bytes: bytes, tensors: list[PackedTensor]) -> None:
    """Write the zip (members stored, fixed timestamps: same inputs, same bytes)."""
    header = {"scheme": SCHEME, "tensors": [
        {"name": t.name, "shape": list(t.shape), "axis": t.axis, "count": t.count,
         "codes": f"t{i}.codes", "scales": f"t{i}.scales"} for i, t in enumerate(tensors)]}
    members = [(HEADER, json.dumps(header, indent=1, sort_keys=True).encode()), (MODEL, model_bytes)]
    for i, t in enumerate(tensors):
        members += [(f"t{i}.codes", t.packed.astype(np.uint8).tobytes()),
                    (f"t{i}.scales", t.scales.astype("<f4").tobytes())]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def read_packed(path: Path) -> tuple[bytes, list[PackedTensor]]:
    """The graph bytes and the packed tensors of ``path``.

    Raises:
        PackedModelError: not a zip, another scheme, a missing member or sizes that disagree.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            header = json.loads(archive.read(HEADER))
            if not isinstance(header, dict) or header.get("scheme") != SCHEME:
                raise PackedModelError(f"{Path(path).name}: packing scheme "
                                       f"{header.get('scheme') if isinstance(header, dict) else None!r}, "
                                       f"this runtime reads {SCHEME!r}")
            model = archive.read(MODEL)
            tensors = [_tensor(archive, entry) for entry in header.get("tensors", [])]
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, TypeError) as err:
        raise PackedModelError(f"{Path(path).name}: not a packed model: {err}") from None
    return model, tensors


def _tensor(archive: zipfile.ZipFile, entry: dict[str, Any]) -> PackedTensor:
    shape = tuple(int(d) for d in entry["shape"])
    axis = int(entry["axis"])
    if not shape or not -len(shape) <= axis < len(shape):
        raise PackedModelError(f"tensor {entry['name']!r}: axis {axis} outside shape {shape}")
    axis %= len(shape)
    packed = np.frombuffer(archive.read(entry["codes"]), dtype=np.uint8)
    scales = np.frombuffer(archive.read(entry["scales"]), dtype="<f4")
    tensor = PackedTensor(str(entry["name"]), shape, axis, packed, scales)
    if int(entry["count"]) != tensor.count or scales.size != shape[axis]:
        raise PackedModelError(f"tensor {tensor.name!r}: {scales.size} scales and count "
                               f"{entry['count']} do not fit shape {shape} (axis {axis})")
    return tensor


class PackedOnnxRunner(OnnxRunner):
    """An :class:`OnnxRunner` on a packed artifact: the ternary tensors unpacked at load.

    Attributes:
        runtime: ``onnxruntime-packed``: what the manifest names, so the server assigns packed
            variants only to devices that announce it (an agent that can unpack; never an older
            agent or an SDK that would hand the zip to onnxruntime and fail to load it).
        wire_bytes: size of the packed file (what a device downloads and stores).
        unpacked_bytes: float32 bytes of the unpacked tensors (what onnxruntime keeps for them).
    """

    runtime = RUNTIME

    def __init__(self, path: Path, input_names: Sequence[str], threads: int | None = None) -> None:
        """Unpack and load ``path``.

        Raises:
            RuntimeUnavailable: onnxruntime is not installed.
            PackedModelError: the file does not follow :data:`SCHEME`.
        """
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime)") from err
        model, tensors = read_packed(path)
        self.version: str = ort.__version__
        self.input_names = list(input_names)
        arrays = [t.unpack() for t in tensors]
        self.wire_bytes = Path(path).stat().st_size
        self.unpacked_bytes = sum(a.nbytes for a in arrays)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        # onnxruntime uses these buffers without copying: they must live as long as the session.
        self._initializers = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        options.add_external_initializers([t.name for t in tensors], self._initializers)
        self._session = ort.InferenceSession(model, sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._inputs = [(i.name, _ORT_DTYPES.get(i.type)) for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
