"""Accuracy-aware tuning of int8 variants (``onnx-int8-static``, ``tflite-int8``,
``onnx-int8-dynamic``) that miss their gates: other calibrations, then per-layer float fallback
guided by sensitivity.

See :mod:`converter.tuning.plan` for the order of attempts and :mod:`converter.tuning.tuner`
for the loop; :mod:`~converter.tuning.onnx_layers`, :mod:`~converter.tuning.onnx_dynamic_layers`
and :mod:`~converter.tuning.tflite_layers` measure per-layer sensitivity.
"""

from __future__ import annotations

from converter.tuning.tuner import needs_tuning, tune_variant

__all__ = ["needs_tuning", "tune_variant"]
