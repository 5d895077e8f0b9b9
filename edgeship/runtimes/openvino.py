"""OpenVINO IR variants (one zip of ``model.xml`` + ``model.bin``) on OpenVINO's CPU plugin.

An IR is two files; a variant ships one, so the converter stores both, uncompressed, in a zip
(:func:`write_ir_zip`; ``docs/formats-openvino.md``). The runner reads both entries into memory
and hands them to ``Core.read_model``: nothing is unpacked to disk. Inference runs with the
f32 precision hint, so a CPU with bf16 units (AMX) computes what the converter validated.
This module imports numpy and, when a runner is built, openvino; never torch.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from edgeship.runtimes.base import RuntimeUnavailable

#: suffix of the shipped file: ``<variant id>.openvino.zip``.
ZIP_SUFFIX = ".openvino.zip"
#: the two entries of the zip: the IR's topology and its weights.
XML_ENTRY, BIN_ENTRY = "model.xml", "model.bin"

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o100644 << 16


def write_ir_zip(xml_path: Path, dest: Path) -> Path:
    """Zip an IR saved as ``xml_path`` (and the ``.bin`` beside it) into ``dest``.

    Entries are stored uncompressed (the runner reads them in place), dated 1980-01-01 with
    mode 0644, so the same IR always gives the same sha256.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for entry, path in ((XML_ENTRY, xml_path), (BIN_ENTRY, xml_path.with_suffix(".bin"))):
            info = zipfile.ZipInfo(entry, _ZIP_DATE)
            info.create_system, info.external_attr = 3, _ZIP_MODE
            archive.writestr(info, path.read_bytes() if path.exists() else b"")
    return dest


def read_ir_zip(path: Path) -> tuple[bytes, bytes]:
    """``(xml, weights)`` of a shipped IR zip.

    Raises:
        ValueError: not a zip, or its entries are not exactly ``model.xml`` and ``model.bin``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(archive.namelist())
            if names != sorted((XML_ENTRY, BIN_ENTRY)):
                raise ValueError(f"{Path(path).name}: an OpenVINO variant zip holds exactly "
                                 f"{XML_ENTRY} and {BIN_ENTRY}, found {names}")
            return archive.read(XML_ENTRY), archive.read(BIN_ENTRY)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{Path(path).name}: not a zip ({err})") from err


def openvino_version() -> str:
    """The installed ``openvino`` distribution's version (what a device reports)."""
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        import openvino

        return str(openvino.__version__).split("-")[0]


class OpenVINORunner:
    """An IR zip compiled for OpenVINO's CPU plugin.

    Attributes:
        runtime: ``openvino``.
        version: the openvino package version.
        input_names: input names in the model's positional order.

    Example:
        >>> runner = OpenVINORunner(Path("m.openvino.zip"), ["image"], threads=1)
        >>> (logits,) = runner.run({"image": batch})
    """

    runtime = "openvino"

    def __init__(self, path: Path, input_names: Sequence[str], threads: int | None = None) -> None:
        """Read and compile ``path``.

        Args:
            path: the ``.openvino.zip`` file.
            input_names: input names in positional order; a feed whose name the model does not
                know is matched to the model's input at the same position.
            threads: inference threads; ``None`` lets OpenVINO choose.

        Raises:
            RuntimeUnavailable: openvino is not installed.
            ValueError: the file is not an IR zip.
        """
        try:
            import openvino as ov
        except ImportError as err:
            raise RuntimeUnavailable("openvino is not installed (pip install openvino)") from err
        xml, weights = read_ir_zip(Path(path))
        self.version = openvino_version()
        self.input_names = list(input_names)
        core = ov.Core()
        model = core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._tensor = ov.Tensor
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._inputs = [
            (port.get_any_name() if port.get_names() else f"input_{k}", port.get_element_type().to_dtype())
            for k, port in enumerate(self._compiled.inputs)
        ]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; outputs in the model's order, floating ones as float32.

        Inputs are wrapped without a copy and outputs read from the request's own tensors:
        ``infer(list)`` converts through dicts and costs more than the model on small CNNs.
        """
        request = self._request
        for position, (name, dtype) in enumerate(self._inputs):
            value = np.asarray(self._feed_for(name, position, feeds)).astype(dtype, copy=False)
            value = np.ascontiguousarray(value)
            request.set_input_tensor(position, self._tensor(value, shared_memory=True))
        request.infer()
        outputs = [request.get_output_tensor(k).data for k in range(len(self._compiled.outputs))]
        # astype copies: the request reuses its output tensors on the next run
        return [o.astype(np.float32) if o.dtype.kind == "f" else o.copy() for o in outputs]

    def _feed_for(self, name: str, position: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The feed for the model input ``name``: by name, else by position in input_names."""
        if name in feeds:
            return feeds[name]
        if position < len(self.input_names) and self.input_names[position] in feeds:
            return feeds[self.input_names[position]]
        raise KeyError(f"no feed for model input {name!r} (got {sorted(feeds)})")
