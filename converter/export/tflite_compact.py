"""Store a TFLite file's tensor names compactly: the only part of an int8 file's overhead the
format leaves to the writer.

litert-torch names each tensor after its PyTorch module path
(``examples.vision.MobileNetV2Style/torch.nn.modules.container.Sequential_features/...``):
100 KB of a 2.8 MB int8 MobileNetV2-style file (0.011x of fp32). Internal tensors get short
names; subgraph inputs and outputs keep theirs, and signatures address tensors by index.
Zero points cannot be dropped: the schema stores them as int64, one per scale, and LiteRT
refuses a quantized tensor whose zero points do not match its scales in number (measured:
per-channel tensors carry 12 bytes of scale and zero point per channel, weights and biases
each); only per-tensor weights avoid them (:mod:`converter.tuning.granularity`).
"""

from __future__ import annotations

from pathlib import Path


def short_tensor_names(path: Path) -> int:
    """Rename the internal tensors of every subgraph of ``path`` in place.

    Returns:
        Bytes saved.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    before = path.stat().st_size
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    for s, graph in enumerate(model.subgraphs):
        keep = {int(t) for t in [*graph.inputs, *graph.outputs]}
        for i, tensor in enumerate(graph.tensors):
            if i not in keep:
                tensor.name = f"t{s}.{i:x}".encode()
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return before - path.stat().st_size
