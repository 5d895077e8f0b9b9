"""Export backends, one module per format: ``onnx``, ``tflite``, ``coreml``.

Each backend module provides the functions of :class:`converter.export.base.Backend`; heavy
imports (onnx, litert-torch, coremltools) stay inside those functions.
"""
