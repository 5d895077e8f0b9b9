"""Builders are dispatched by the catalogue's table: every kind names one, all share a signature."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from converter.catalogue import VARIANT_KINDS
from converter.export.base import ExportContext, VariantRequest
from converter.export.dispatch import artifact_path, builder_for

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnx", "onnxruntime", "litert_torch", "ai_edge_quantizer", "ai_edge_litert",
         "coremltools", "openvino", "nncf")


@pytest.mark.parametrize("kind", list(VARIANT_KINDS))
def test_every_kind_names_a_builder_with_the_common_signature(kind: str) -> None:
    builder = builder_for(VARIANT_KINDS[kind])
    assert list(inspect.signature(builder).parameters) == ["request", "base", "ctx", "out"]
    assert builder.__module__.startswith(f"converter.export.{VARIANT_KINDS[kind].format}")


def test_artifact_is_the_variant_id_with_the_format_suffix(tmp_path: Path) -> None:
    ctx = ExportContext(model=None, inputs=[], outputs=[], example={}, calibration=iter,
                        calibration_count=0, work_dir=tmp_path)
    suffixes = {}
    for kind in VARIANT_KINDS.values():
        path = artifact_path(VariantRequest("v1", kind, {}), ctx)
        assert path.parent == tmp_path and path.name.startswith("v1.")
        suffixes[kind.format] = path.name[len("v1"):]
    assert {f: suffixes[f] for f in ("onnx", "tflite", "coreml", "openvino")} == {
        "onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage.zip", "openvino": ".openvino.zip"}


def test_resolving_every_builder_loads_no_toolchain() -> None:
    probe = ("import json, sys\n"
             "from converter.catalogue import VARIANT_KINDS\n"
             "from converter.export.dispatch import builder_for\n"
             "for kind in VARIANT_KINDS.values():\n"
             "    builder_for(kind)\n"
             "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         check=True, timeout=120)
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
