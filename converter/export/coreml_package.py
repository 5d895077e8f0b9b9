"""CoreML packages as one shippable file: canonical ``.mlpackage``, deterministic zip.

Layout of ``<variant id>.mlpackage.zip``::

    model.mlpackage/Data/com.apple.CoreML/model.mlmodel      # the spec (protobuf)
    model.mlpackage/Data/com.apple.CoreML/weights/weight.bin # weight blobs
    model.mlpackage/Manifest.json                            # package item index

Entries are sorted, stored, dated 1980-01-01 with mode 0644; ``Manifest.json`` item ids become
UUIDv5 of the item path and coremltools' ``conversion_date`` is dropped, so the same model
and options give the same sha256.
"""

from __future__ import annotations

import json
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

#: the package directory inside the shipped zip.
PACKAGE_DIR = "model.mlpackage"
#: suffix of the shipped file: ``<variant id>.mlpackage.zip``.
ZIP_SUFFIX = ".mlpackage.zip"

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o100644 << 16
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://edgeship/coreml/mlpackage")
_DROPPED_METADATA = ("com.github.apple.coremltools.conversion_date",)


def write_package_zip(model: Any, dest: Path, scratch: Path) -> Path:
    """Save ``model`` as a canonical ``.mlpackage`` and zip it to ``dest``.

    Args:
        model: a ``coremltools.models.MLModel`` (ML Program).
        dest: the zip to write.
        scratch: an empty-able directory for the unzipped package; removed afterwards.

    Returns:
        ``dest``.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        package = scratch / PACKAGE_DIR
        model.save(str(package))
        canonicalize_package(package)
        zip_package(package, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest


def canonicalize_package(package: Path) -> None:
    """Make a saved ``.mlpackage`` byte-reproducible (see the module docstring)."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {
        old: str(uuid.uuid5(_UUID_NAMESPACE, entry["path"]))
        for old, entry in manifest["itemInfoEntries"].items()
    }
    manifest["itemInfoEntries"] = {renamed[old]: entry for old, entry in manifest["itemInfoEntries"].items()}
    root = manifest["itemInfoEntries"][renamed[manifest["rootModelIdentifier"]]]
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    _canonicalize_spec(package / "Data" / root["path"])


def _canonicalize_spec(spec_path: Path) -> None:
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    for key in _DROPPED_METADATA:
        if key in spec.description.metadata.userDefined:
            del spec.description.metadata.userDefined[key]
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def zip_package(package: Path, dest: Path) -> None:
    """Zip the directory ``package`` as ``model.mlpackage/...`` entries, deterministically.

    Entries are sorted by path, stored uncompressed, dated 1980-01-01 with mode 0644; files are
    streamed, so large weight files are not read into memory.
    """
    files = sorted(
        (p for p in package.rglob("*") if p.is_file()), key=lambda p: p.relative_to(package).as_posix()
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in files:
            info = zipfile.ZipInfo(f"{PACKAGE_DIR}/{path.relative_to(package).as_posix()}", _ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = _ZIP_MODE
            info.file_size = path.stat().st_size
            with path.open("rb") as src, archive.open(info, "w") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def unzip_package(path: Path, dest_dir: Path) -> Path:
    """Extract a shipped zip under ``dest_dir`` and return the ``model.mlpackage`` directory.

    Raises:
        ValueError: the zip is not a CoreML package zip (no ``model.mlpackage/`` root, or an
            entry that would land outside it).
    """
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if not names or any(
            not n.startswith(PACKAGE_DIR + "/") or ".." in Path(n).parts or n.startswith("/") for n in names
        ):
            raise ValueError(f"{path.name}: entries must all be under {PACKAGE_DIR}/")
        archive.extractall(dest_dir)
    return dest_dir / PACKAGE_DIR

