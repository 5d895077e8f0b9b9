"""MNN backend: ``.mnn`` files converted from the ONNX export by MNN's own converter (MNNConvert).

The base is the ONNX export (:mod:`converter.export.onnx`, reused when the ONNX format already
made it for this model) converted once to a float32 ``.mnn``; ``mnn-fp32`` ships that file and
``mnn-int8`` converts again with MNN's weight quantization (int8 Conv/MatMul weights, per output
channel or per block, float activations). Why weight quantization and not MNN's calibrated
full-int8 tool is in ``docs/formats-mnn.md``.

MNNConvert runs in a child interpreter through the ``mnn`` wheel's ``_tools`` extension, not
through its ``mnnconvert`` console script: the script's wrapper sends usage logs to a remote
service (and tries to ``pip install`` a logging SDK), and the converter segfaults on some graphs
(ONNX ``STFT``), which must fail one format, not the conversion.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from converter.errors import UnsupportedModelError, VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, NotApplicable, VariantRequest

#: where the float32 ``.mnn`` base is written, under ``ctx.work_dir``.
BASE_DIR = "_mnn_base"
#: MNNConvert gets this long per model.
CONVERT_TIMEOUT_SECONDS = 600
#: an int8 file must be at most this share of the fp32 file, or nothing was quantized.
QUANTIZED_SIZE_SHARE = 0.9
_BIZ_CODE = "edgeship"
# Runs MNNConvert with the arguments after ``-c``; exit 0 only when it reports success.
_CONVERT_SCRIPT = "import sys, _tools; sys.exit(0 if _tools.mnnconvert(sys.argv) else 1)"


@dataclass(frozen=True)
class MNNBase:
    """What the MNN builders start from: the ONNX export and its float32 MNN conversion."""

    onnx: Path
    fp32: Path


def export_base(ctx: ExportContext) -> MNNBase:
    """Export the model to ONNX (or reuse that export) and convert it to a float32 ``.mnn``.

    Raises:
        ImportError: the ``mnn`` package is not installed.
        UnsupportedModelError: the ONNX export or MNNConvert refused the model.
    """
    if importlib.util.find_spec("MNN") is None:
        raise ImportError("mnn is not installed (pip install mnn)")
    source = _onnx_source(ctx)
    out_dir = ctx.work_dir / BASE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / "base.mnn"
    ctx.progress.say("mnn: converting the ONNX export with MNNConvert")
    failure = convert(source, fp32)
    if failure:
        raise UnsupportedModelError("mnn", f"MNNConvert: {failure}")
    return MNNBase(onnx=source, fp32=fp32)


def build_fp32(request: VariantRequest, base: MNNBase, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``mnn-fp32``: the float32 conversion as it is."""
    shutil.copyfile(base.fp32, out)
    return BuiltVariant(path=out, precision=request.kind.precision,
                        details={"converter": "MNNConvert", "source": "onnx"})


def build_int8(request: VariantRequest, base: MNNBase, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``mnn-int8``: int8 weights (``--weightQuantBits 8``), float activations.

    Options: ``block_size`` (0: one scale per output channel; else weights per block of that
    many input elements), ``asymmetric`` (a zero point per scale; needs MNN >= 2.x on devices).

    Raises:
        VariantBuildError: a bad option, or MNNConvert failed.
        NotApplicable: the model has no Conv/MatMul weights to quantize.
    """
    block_size = request.options.get("block_size", 0)
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 0:
        raise VariantBuildError(f"{request.id}: block_size must be 0 (per channel) or a positive "
                                f"integer, got {block_size!r}")
    asymmetric = bool(request.options.get("asymmetric", False))
    flags = ["--weightQuantBits", "8"]
    if block_size:
        flags += ["--weightQuantBlock", str(block_size)]
    if asymmetric:
        flags.append("--weightQuantAsymmetric")
    ctx.progress.say(f"{request.id}: MNNConvert with int8 weights")
    failure = convert(base.onnx, out, flags)
    if failure:
        raise VariantBuildError(f"{request.id}: MNNConvert: {failure}")
    fp32_bytes, int8_bytes = base.fp32.stat().st_size, out.stat().st_size
    if int8_bytes > QUANTIZED_SIZE_SHARE * fp32_bytes:
        out.unlink()
        raise NotApplicable(f"{request.id}: MNN found no Conv/MatMul weights to quantize "
                            f"({int8_bytes} bytes against {fp32_bytes} in float32)")
    granularity = f"block-{block_size}" if block_size else "per-channel"
    scheme = "asymmetric" if asymmetric else "symmetric"
    return BuiltVariant(
        path=out, precision=request.kind.precision,
        compression=[f"quant:weights:int8:{granularity}:{scheme}"],
        details={"converter": "MNNConvert", "weight_bits": 8, "weight_granularity": granularity,
                 "weight_scheme": scheme, "activations": "float32",
                 "size_share_of_fp32": round(int8_bytes / fp32_bytes, 3)},
    )


def convert(source: Path, out: Path, flags: list[str] | None = None) -> str | None:
    """Run MNNConvert on the ONNX file ``source`` into ``out`` in a child interpreter.

    Returns:
        ``None`` on success, else the reason (the converter's last error line, or the signal
        that killed it).
    """
    args = ["MNNConvert", "-f", "ONNX", "--modelFile", str(source), "--MNNModel", str(out),
            "--bizCode", _BIZ_CODE, *(flags or [])]
    try:
        done = subprocess.run([sys.executable, "-c", _CONVERT_SCRIPT, *args], capture_output=True,
                              text=True, timeout=CONVERT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return f"timed out after {CONVERT_TIMEOUT_SECONDS} s"
    if done.returncode == 0 and out.is_file() and out.stat().st_size > 0:
        return None
    if done.returncode < 0:
        return f"killed by signal {-done.returncode} while converting"
    lines = [ln.strip() for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "not support" in ln.lower()]
    return (errors or lines or [f"exit {done.returncode}"])[-1][:300]


def _onnx_source(ctx: ExportContext) -> Path:
    """The ONNX export of ``ctx.model``: the one the ONNX format made in this work directory
    (finished: tagged with its exporter), else a new one."""
    from converter.export import onnx as onnx_backend
    from converter.export.onnx_common import read_exporter

    existing = ctx.work_dir / onnx_backend.BASE_DIR / "base.onnx"
    if existing.is_file():
        try:
            if read_exporter(existing) != "unknown":
                return existing
        except Exception:  # a partial file from a refused export: export again
            pass
    return onnx_backend.export_base(ctx)
