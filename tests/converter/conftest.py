"""Fixtures shared by the converter tests: the tiny BERT example (a MatMul-heavy model, trained
in seconds) with its export context and base exports, made once per test session (the int4 and
mixed-precision tests read them; none writes to them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def export_context(model, specs, samples: list[dict[str, np.ndarray]], work: Path):
    """An ExportContext over ``samples`` (the first is the example), outputs from a real run."""
    from converter.export.base import ExportContext
    from converter.reference import fit_check

    work.mkdir(parents=True, exist_ok=True)
    return ExportContext(model=model.eval(), inputs=specs, outputs=fit_check(model, specs, samples[0]),
                         example=samples[0], calibration=lambda: iter(samples),
                         calibration_count=len(samples), work_dir=work)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """examples/tiny_bert.py trained briefly: ``tiny_bert.pt``, ``calib.npz``, ``eval.npz``."""
    pytest.importorskip("torch")
    from examples.tiny_bert import build_example

    out = tmp_path_factory.mktemp("tiny-bert")
    build_example(out, epochs=3)
    return out


@pytest.fixture(scope="session")
def bert(bert_dir, tmp_path_factory):
    """The tiny BERT's export context on 16 calibration samples."""
    import torch

    from converter.data import load_samples
    from converter.specs import parse_input_spec
    from examples.tiny_bert import INPUT_SPECS

    specs = [parse_input_spec(s) for s in INPUT_SPECS]
    calib = load_samples(bert_dir / "calib.npz", specs, "calibration")
    model = torch.load(bert_dir / "tiny_bert.pt", weights_only=False)
    return export_context(model, specs, [calib.sample(i) for i in range(16)],
                          tmp_path_factory.mktemp("bert-work"))


@pytest.fixture(scope="session")
def bert_onnx(bert) -> Path:
    pytest.importorskip("onnxruntime")
    from converter.export.onnx import export_base

    return export_base(bert)


@pytest.fixture(scope="session")
def bert_tflite(bert) -> Path:
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    from converter.export.tflite import export_base

    return export_base(bert)
