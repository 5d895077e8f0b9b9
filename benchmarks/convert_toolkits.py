"""The two toolkits' own defaults, built from the same fp32 files the converter shipped.

What a user would run without edgeship: onnxruntime's ``quantize_dynamic`` and
``quantize_static`` with their default arguments on the exported ``.onnx`` (no
pre-processing), and ai-edge-quantizer's ``dynamic_wi8_afp32`` and ``static_wi8_ai8`` recipes
(default calibration) on the exported ``.tflite``. Each builder returns the file and the
seconds it took; :mod:`benchmarks.convert_bench` measures them next to the converter's variants.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Baseline:
    """One toolkit default: its row name, format and builder ``(fp32 file, calib, out)``."""

    name: str
    format: str
    build: Callable[[Path, list[dict[str, np.ndarray]], Path], None]


def ort_dynamic(base: Path, calib: list[dict[str, np.ndarray]], out: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    with _quiet():
        quantize_dynamic(base, out)


def ort_static(base: Path, calib: list[dict[str, np.ndarray]], out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with _quiet():
        quantize_static(base, out, Reader())


def aeq_dynamic(base: Path, calib: list[dict[str, np.ndarray]], out: Path) -> None:
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(str(base), recipe.dynamic_wi8_afp32())
    with _quiet():
        out.write_bytes(bytes(q.quantize().quantized_model))


def aeq_static(base: Path, calib: list[dict[str, np.ndarray]], out: Path) -> None:
    from ai_edge_quantizer import quantizer, recipe

    from converter.export.tflite_common import load_interpreter
    from edgeship.runtimes.litert import signature_io, signature_key

    interpreter = load_interpreter(base)
    key = signature_key(interpreter) or "serving_default"
    inputs, _ = signature_io(interpreter)
    names = list(calib[0])
    data = {key: [{d["signature_name"]: sample[name].astype(d["dtype"])
                   for name, d in zip(names, inputs, strict=True)} for sample in calib]}
    q = quantizer.Quantizer(str(base), recipe.static_wi8_ai8())
    with _quiet():
        stats = q.calibrate(data)
        out.write_bytes(bytes(q.quantize(stats).quantized_model))


BASELINES = (
    Baseline("onnxruntime quantize_dynamic (defaults)", "onnx", ort_dynamic),
    Baseline("onnxruntime quantize_static (defaults)", "onnx", ort_static),
    Baseline("ai-edge-quantizer dynamic_wi8_afp32", "tflite", aeq_dynamic),
    Baseline("ai-edge-quantizer static_wi8_ai8", "tflite", aeq_static),
)


def build_baselines(fp32: dict[str, Path], calib: list[dict[str, np.ndarray]], out: Path,
                    say: Callable[[str], None]) -> list[dict]:
    """Build every baseline whose format has an fp32 file; one dict per baseline with ``name``,
    ``format``, ``path`` (or ``None``), ``seconds`` and ``error``."""
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for i, baseline in enumerate(BASELINES):
        base = fp32.get(baseline.format)
        if base is None:
            continue
        path = out / f"baseline-{i}{base.suffix}"
        say(f"  toolkit default: {baseline.name}")
        started, error = time.monotonic(), None
        try:
            baseline.build(base, calib, path)
        except Exception as err:  # a toolkit failing on the model is a result, not a crash
            error, path = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", None
        built.append({"name": baseline.name, "format": baseline.format, "path": path,
                      "seconds": round(time.monotonic() - started, 1), "error": error})
    return built


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    saved = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger().setLevel(saved)
