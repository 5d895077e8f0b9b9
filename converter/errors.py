"""Errors the converter raises for bad input or a failed toolchain step.

Every error carries a one-line message that names the problem; the CLI prints it and exits
with a non-zero code. ``ValueError`` subclasses keep the bad value in the message.
"""

from __future__ import annotations

from edgeship.contract.errors import EdgeshipError


class ConverterError(EdgeshipError):
    """Base class: a conversion that cannot go on. ``str(err)`` is a one-line reason."""


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
