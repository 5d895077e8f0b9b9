"""CoreML models (zipped ``.mlpackage``) on Core ML through coremltools, macOS only.

A CoreML variant ships as one zip holding a single ``<name>.mlpackage/`` directory (see
``docs/formats-coreml.md``). The runner unzips it once into a cache directory keyed by the
zip's sha256, loads it with ``coremltools.models.MLModel`` and predicts with a feed dict.
CoreML features are int32/float16/float32 multi-arrays, so feeds are cast to the type each
input declares (int64 token ids become int32) and outputs come back as float32 in the model's
output order.

Core ML prediction needs macOS: elsewhere the runner raises :class:`RuntimeUnavailable`
before importing anything. This module never imports torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.runtimes.base import RuntimeUnavailable

#: the reason given on hosts that cannot run Core ML.
NOT_MACOS = "CoreML prediction requires macOS"
#: cache for unzipped packages; override with ``EDGESHIP_COREML_CACHE``.
CACHE_ENV = "EDGESHIP_COREML_CACHE"

# MLMultiArray element types by ArrayFeatureType.ArrayDataType name.
_ARRAY_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64, "INT32": np.int32}


class CoreMLRunner:
    """A zipped ``.mlpackage`` loaded on Core ML.

    Attributes:
        runtime: ``coreml``.
        version: ``coremltools <version>``.
        input_names: input names in the model's positional order.
        output_names: output names in the model's output order.
    """

    runtime = "coreml"

    def __init__(
        self,
        path: Path,
        input_names: Sequence[str],
        cache_dir: Path | None = None,
        compute_units: str = "ALL",
    ) -> None:
        """Unzip (once) and load the package.

        Args:
            path: the ``.mlpackage.zip`` file.
            input_names: input names in the model's positional order.
            cache_dir: where packages are unzipped; default ``$EDGESHIP_COREML_CACHE`` or
                ``<tmp>/edgeship-coreml``.
            compute_units: a ``coremltools.ComputeUnit`` name (``ALL``, ``CPU_ONLY``,
                ``CPU_AND_GPU``, ``CPU_AND_NE``).

        Raises:
            RuntimeUnavailable: not macOS, or coremltools is not installed.
            ValueError: the zip is not a CoreML package, or the inputs do not match.
        """
        if sys.platform != "darwin":
            raise RuntimeUnavailable(NOT_MACOS)
        try:
            import coremltools as ct
        except ImportError:
            raise RuntimeUnavailable("coremltools is not installed") from None
        self.version = f"coremltools {ct.__version__}"
        package = _unpack(Path(path), cache_dir or _default_cache())
        self._model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))
        description = self._model.get_spec().description
        self._input_dtypes = {f.name: _feature_dtype(f) for f in description.input}
        self.output_names = [f.name for f in description.output]
        self.input_names = list(input_names)
        if sorted(self.input_names) != sorted(self._input_dtypes):
            raise ValueError(
                f"{Path(path).name}: model inputs are {list(self._input_dtypes)}, expected {self.input_names}"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Predict one batch; outputs as float32 arrays in the model's output order."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing inputs: {', '.join(missing)}")
        cast = {
            name: np.ascontiguousarray(feeds[name], dtype=self._input_dtypes[name])
            for name in self.input_names
        }
        result = self._model.predict(cast)
        return [np.asarray(result[name], dtype=np.float32) for name in self.output_names]


def _default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "edgeship-coreml")


def _unpack(path: Path, cache_dir: Path) -> Path:
    """Unzip ``path`` under ``cache_dir/<sha256>/`` (once) and return its package directory."""
    target = cache_dir / _sha256(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or not next(iter(roots)).endswith(".mlpackage"):
            raise ValueError(f"{path.name}: expected one top-level .mlpackage directory")
        if any(n.startswith("/") or ".." in Path(n).parts for n in names):
            raise ValueError(f"{path.name}: unsafe entry path")
        package = target / next(iter(roots))
        if not (package / "Manifest.json").is_file():
            partial = Path(tempfile.mkdtemp(prefix=".unpack-", dir=_mkdir(cache_dir)))
            archive.extractall(partial)
            _mkdir(target)
            try:
                os.replace(partial / package.name, package)
            except OSError:
                if not (package / "Manifest.json").is_file():  # not another process's unzip
                    raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    return package


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _feature_dtype(feature: Any) -> type:
    from coremltools.proto import FeatureTypes_pb2

    if feature.type.WhichOneof("Type") != "multiArrayType":
        raise ValueError(f"input {feature.name!r} is not a multi-array")
    name = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(feature.type.multiArrayType.dataType)
    return _ARRAY_DTYPES.get(name, np.float32)
