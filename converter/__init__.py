"""edgeship converter: one PyTorch model in, validated and signed ONNX/TFLite/CoreML variants out.

Example:
    >>> from converter import convert
    >>> manifest = convert("examples.digits:trained_model", ["image:1x1x8x8:float32"],
    ...                    eval_data="build/digits/eval.npz", out="build/release",
    ...                    model_name="digits-cnn", version="1", signing_key="keys/publisher.key")

Importing this package is cheap: torch and the toolchains load only when a conversion runs,
so the rollout server and the agent can use :mod:`edgeship.contract.manifest` and
:mod:`edgeship.contract.signing` without them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["convert", "run_conversion"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from converter import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'converter' has no attribute {name!r}")
