"""Errors the converter raises for bad input or a failed toolchain step.

Every error carries a one-line message that names the problem; the CLI prints it and exits
with a non-zero code. ``ValueError`` subclasses keep the bad value in the message.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ConverterError(Exception):
    """Base class: a conversion that cannot go on. ``str(err)`` is a one-line reason."""

    exit_code = 2


class InputSpecError(ConverterError, ValueError):
    """An ``--input NAME:SHAPE:DTYPE`` spec is malformed or does not fit the model."""


class ModelLoadError(ConverterError):
    """The model could not be loaded from its factory path or file."""


class DataError(ConverterError, ValueError):
    """A calibration or evaluation ``.npz`` is missing arrays, has the wrong shape or NaN/Inf."""


class RecipeError(ConverterError, ValueError):
    """The recipe TOML names an unknown variant, option or gate."""


class OutputError(ConverterError):
    """The release directory cannot be written."""


class SigningError(ConverterError):
    """No usable signing key, or a signature that does not verify."""


class UnsupportedModelError(ConverterError):
    """A format's exporter cannot take the model (for example an unsupported op).

    Attributes:
        format: the export format that refused the model (``onnx``, ``tflite``, ``coreml``).
        op: the operator named by the toolchain, when it could be found.
    """

    def __init__(self, format: str, detail: str, op: str | None = None) -> None:
        self.format = format
        self.op = op
        self.detail = detail
        where = f"unsupported op {op!r}" if op else "export failed"
        super().__init__(f"{format}: {where}: {detail}")


class VariantBuildError(ConverterError):
    """One variant could not be built; the others go on."""


class CompressionError(ConverterError):
    """A compression step (fuse, prune, distill) could not run on this model; the variants that
    need the step fail with this reason while the others go on."""


def first_line(exc: BaseException, limit: int = 300, innermost: bool = False) -> str:
    """The first non-empty line of an exception's message, without ANSI codes, cut at ``limit``.

    Toolchains raise multi-line messages (graphs, tracebacks); errors here are one line. With
    ``innermost`` the message comes from the deepest ``__cause__`` (exporters wrap the error
    that names the op in several layers).
    """
    while innermost and exc.__cause__ is not None:
        exc = exc.__cause__
    text = _ANSI.sub("", str(exc))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
