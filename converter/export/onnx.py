"""ONNX backend: the base export with ``torch.onnx``, which is also the ``onnx-fp32`` variant.

The base model is exported once with the torch.export-based (dynamo) exporter, the default and
maintained path in torch >= 2.9; when ``torch.export`` cannot capture the model, the legacy
TorchScript tracer is tried before giving up. Shapes are static (batch dimension as given) and
the file is self-contained (weights inline, no external data).

``onnx-fp32`` is built here (:func:`build_fp32`: the base export, or a re-export at another
opset). The other kinds live in :mod:`converter.export.onnx_quant` (fp16, int8 dynamic),
:mod:`converter.export.onnx_static` (static int8) and :mod:`converter.export.onnx_weights`
(weight-only int8); what they share with this module is in :mod:`converter.export.onnx_common`.
The catalogue names each kind's builder and :mod:`converter.export.dispatch` calls it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter.errors import UnsupportedModelError, VariantBuildError
from converter.export.base import BuiltVariant, ExportContext, VariantRequest
from converter.export.onnx_common import EXPORTER_KEY, count_nodes, read_exporter
from edgeship.contract.errors import first_line

#: opset the base model is exported at (the catalogue's default for ``onnx-fp32``).
DEFAULT_OPSET = 18
#: where the base export is written, under ``ctx.work_dir``.
BASE_DIR = "_onnx_base"

_ORT_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(\d+\) node")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Operator names in the exporters' messages, most specific first.
_OP_PATTERNS = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'"),  # dynamo dispatch
    re.compile(r"Exporting the operator '([\w:.]+)' to ONNX"),  # TorchScript exporter
    re.compile(r"target=torch\.ops\.(\w+)\.(\w+)\.\w+\]"),  # dynamo node translation
    re.compile(r"Unsupported[^\n]*?\b((?:aten|prims)[.:]+\w+)"),
)


def export_base(ctx: ExportContext) -> Path:
    """Export ``ctx.model`` to a float32 ONNX file once; the other variants start from it.

    Args:
        ctx: the export context (model, input/output specs, example, work dir).

    Returns:
        Path of the checked, self-contained base ``.onnx`` file under ``ctx.work_dir``.

    Raises:
        UnsupportedModelError: neither exporter could take the model; ``op`` names the
            operator the exporter refused when its message names one.
    """
    out_dir = ctx.work_dir / BASE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "base.onnx"
    ctx.progress.say("onnx: exporting with torch.onnx (dynamo)")
    exporter = _export_with_fallback(ctx, path, DEFAULT_OPSET)
    _finalize(path, exporter)
    _check_runtime(path, ctx)
    return path


def build_fp32(request: VariantRequest, base: Path, ctx: ExportContext, out: Path) -> BuiltVariant:
    """``onnx-fp32``: copy the base export, or re-export when the recipe asks for another opset."""
    opset = int(request.options.get("opset", DEFAULT_OPSET))
    if opset == DEFAULT_OPSET:
        shutil.copyfile(base, out)
        exporter = read_exporter(base)
    else:
        ctx.progress.say(f"onnx: re-exporting {request.id} at opset {opset}")
        try:
            exporter = _export_with_fallback(ctx, out, opset)
            _finalize(out, exporter)
            _check_runtime(out, ctx)
        except UnsupportedModelError as err:
            raise VariantBuildError(f"{request.id}: opset {opset}: {err.detail}") from err
    return BuiltVariant(
        path=out,
        precision=request.kind.precision,
        details={"opset": opset, "exporter": exporter, "nodes": count_nodes(out)},
    )


# --------------------------------------------------------------------------- export


def _export_with_fallback(ctx: ExportContext, path: Path, opset: int) -> str:
    """Try the dynamo exporter, then TorchScript; return the name of the one that worked."""
    try:
        _run_export(ctx, path, opset, dynamo=True)
        return "dynamo"
    except Exception as dynamo_err:
        reason = first_line(dynamo_err, 200, innermost=True)
        ctx.progress.say(f"onnx: dynamo export failed ({reason}); trying TorchScript")
        try:
            _run_export(ctx, path, opset, dynamo=False)
            return "torchscript"
        except Exception as ts_err:
            op = find_unsupported_op(dynamo_err) or find_unsupported_op(ts_err)
            raise UnsupportedModelError("onnx", reason, op=op) from dynamo_err


def _run_export(ctx: ExportContext, path: Path, opset: int, *, dynamo: bool) -> None:
    """One ``torch.onnx.export`` call with the exporters' chatter kept off the console."""
    import torch

    ctx.model.eval()
    kwargs: dict[str, Any] = {"dynamo": dynamo}
    if dynamo:
        kwargs.update(external_data=False, optimize=True)
    # The TorchScript exporter dumps the whole graph to stdout on failure (C++ logging).
    quiet_fds = contextlib.nullcontext() if dynamo else _silenced_fds()
    with _quiet_exporter(), quiet_fds, torch.no_grad():
        torch.onnx.export(
            ctx.model,
            ctx.example_tensors(),
            str(path),
            input_names=[s.name for s in ctx.inputs],
            output_names=[s.name for s in ctx.outputs],
            opset_version=opset,
            **kwargs,
        )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' progress prints, deprecation warnings and registry logging."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _silenced_fds() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null (output written by C++, not ``sys.stdout``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _finalize(path: Path, exporter: str) -> None:
    """Strip exporter debug metadata, tag the exporter, run the ONNX checker, save inline."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]  # fx node dumps and source stack traces
    for meta in list(model.metadata_props):
        if meta.key == EXPORTER_KEY:
            model.metadata_props.remove(meta)
    model.metadata_props.add(key=EXPORTER_KEY, value=exporter)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:
        raise UnsupportedModelError("onnx", f"onnx.checker: {first_line(err, 200, innermost=True)}") from err
    onnx.save(model, str(path))
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()


def _check_runtime(path: Path, ctx: ExportContext) -> None:
    """Preflight: onnxruntime CPU loads the export and runs the example sample.

    Raises:
        UnsupportedModelError: onnxruntime has no kernel for an op, or fails to run the graph.
    """
    from edgeship.runtimes.onnx import OnnxRunner

    try:
        OnnxRunner(path, [s.name for s in ctx.inputs], threads=1).run(ctx.example)
    except Exception as err:  # any load/run failure: the export is unusable
        match = _ORT_MISSING_KERNEL.search(str(err))
        raise UnsupportedModelError(
            "onnx", f"onnxruntime cannot run the export: {first_line(err, 200, innermost=True)}",
            op=match.group(1) if match else None,
        ) from err


def find_unsupported_op(err: BaseException) -> str | None:
    """The operator an exporter error names, as ``namespace::name`` (``aten::kthvalue``).

    Walks the exception chain, since the dynamo exporter wraps the dispatch error.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    texts = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    text = _ANSI.sub("", "\n".join(texts))
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            name = "::".join(match.groups()) if len(match.groups()) > 1 else match.group(1)
            return name.replace(".", "::", 1) if "::" not in name else name
    return None
