"""Export backends and variant builders, per format: ``onnx*``, ``tflite*``, ``coreml*``.

``<format>.py`` exports the base model (``export_base``, see :mod:`converter.export.base`);
the builders of the other kinds sit beside it and share the format's leaf module
(``onnx_common``, ``tflite_common``); :mod:`converter.export.dispatch` calls the builder the
catalogue names for a kind. Heavy imports (onnx, litert-torch, coremltools) stay inside the
functions.
"""
