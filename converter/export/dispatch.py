"""Build one variant: look up its kind's builder in the catalogue and call it.

The table is the catalogue (:attr:`converter.catalogue.VariantKind.builder` names
``module:function``) and every builder has the :class:`~converter.export.base.Builder`
signature, so all this module decides is where the file goes. It holds no format's helpers and
no builder imports it: builders import their format's leaf module (``onnx_common``,
``tflite_common``), so dispatching never closes an import cycle. Builders are imported on first
use, which keeps the catalogue and this module free of the toolchains.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from converter.catalogue import VariantKind
from converter.export.base import Builder, BuiltVariant, ExportContext, VariantRequest
from converter.export.coreml_package import ZIP_SUFFIX
from edgeship.runtimes.openvino import ZIP_SUFFIX as OPENVINO_SUFFIX

#: file suffix of the artifact a variant ships, per format: ``<variant id><suffix>``.
ARTIFACT_SUFFIXES = {
    "onnx": ".onnx",
    "tflite": ".tflite",
    "coreml": ZIP_SUFFIX,
    "openvino": OPENVINO_SUFFIX,
    "mnn": ".mnn",
    "executorch": ".pte",
}


def builder_for(kind: VariantKind) -> Builder:
    """The function the catalogue names as ``kind``'s builder (its module imported now)."""
    module, _, name = kind.builder.partition(":")
    return getattr(importlib.import_module(module), name)


def artifact_path(request: VariantRequest, ctx: ExportContext) -> Path:
    """Where ``request``'s artifact is written: ``<request.id><suffix>`` under ``ctx.work_dir``."""
    return Path(ctx.work_dir) / f"{request.id}{ARTIFACT_SUFFIXES[request.kind.format]}"


def build_variant(request: VariantRequest, base: Any, ctx: ExportContext) -> BuiltVariant:
    """Build ``request`` from its format's base export with the builder its kind names.

    Args:
        request: the variant to build (its id, kind and options).
        base: what the format's ``export_base`` returned.
        ctx: the export context.

    Raises:
        VariantBuildError: the toolchain failed on this variant.
        NotApplicable: the kind has nothing to do on this model.
    """
    return builder_for(request.kind)(request, base, ctx, artifact_path(request, ctx))
