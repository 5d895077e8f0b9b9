"""The PyTorch reference: fit check, output specs, reference outputs, parameters and MACs."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.data import SampleSet
from converter.errors import InputSpecError
from converter.progress import Progress
from converter.specs import TensorSpec

if TYPE_CHECKING:
    import torch


@dataclass
class Reference:
    """What the uncompressed model does on the evaluation set.

    Attributes:
        outputs: one array per model output, samples stacked along axis 0.
        output_specs: name, shape and dtype of each output for one sample.
        params: parameter count. macs: multiply-accumulates for one sample.
        sha256: hash of the serialized state dict (identifies the source weights).
    """

    outputs: list[np.ndarray]
    output_specs: list[TensorSpec]
    params: int
    macs: int
    sha256: str


def flatten_outputs(result: Any) -> tuple[list[str | None], list[torch.Tensor]]:
    """Flatten a model's return value (tensor, tuple/list, dict, nested) into tensors.

    Exporters flatten nested outputs in the same depth-first order.
    """
    import torch

    if isinstance(result, torch.Tensor):
        return [None], [result]
    names: list[str | None] = []
    tensors: list[torch.Tensor] = []
    if isinstance(result, dict):
        items = list(result.items())
    elif isinstance(result, list | tuple):
        items = [(None, r) for r in result]
    elif type(result).__name__.endswith("Cache"):  # transformers' KV cache (DynamicCache, ...)
        raise InputSpecError(f"model returned a key/value cache ({type(result).__name__}); "
                             "convert a fixed-length forward pass: set config.use_cache = False")
    else:
        raise InputSpecError(f"model returned {type(result).__name__}; expected tensors")
    for key, value in items:
        sub_names, sub_tensors = flatten_outputs(value)
        names += [key if len(sub_names) == 1 and key else n for n in sub_names]
        tensors += sub_tensors
    return names, tensors


def run_model(model: torch.nn.Module, inputs: list[TensorSpec], sample: dict[str, np.ndarray]):
    """Run one sample through the model and return its flattened output tensors."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[s.name])) for s in inputs)
    with torch.inference_mode():
        return flatten_outputs(model(*args))


def fit_check(model: torch.nn.Module, inputs: list[TensorSpec], sample: dict[str, np.ndarray]):
    """Run one sample; turn a shape or dtype mismatch into a one-line :class:`InputSpecError`.

    Returns:
        The output specs, named ``output`` or ``output_<i>`` (dict keys when the model
        returns a dict).
    """
    try:
        names, tensors = run_model(model, inputs, sample)
    except InputSpecError:
        raise
    except Exception as err:
        given = ", ".join(f"{s.name}:{'x'.join(map(str, s.shape))}:{s.dtype}" for s in inputs)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputSpecError(f"inputs [{given}] do not fit the model: {first}") from err
    if len(tensors) == 1 and names[0] is None:
        names = ["output"]
    names = [n if n else f"output_{i}" for i, n in enumerate(names)]
    return [
        TensorSpec(n, tuple(t.shape), str(t.dtype).replace("torch.", ""))
        for n, t in zip(names, tensors, strict=True)
    ]


def compute_reference(
    model: torch.nn.Module,
    inputs: list[TensorSpec],
    output_specs: list[TensorSpec],
    samples: SampleSet,
    progress: Progress,
) -> Reference:
    """Run the evaluation samples through PyTorch one model-sized batch at a time."""
    collected: list[list[np.ndarray]] = [[] for _ in output_specs]
    for sample in progress.iterate(samples, "reference (PyTorch)", total=len(samples)):
        _, tensors = run_model(model, inputs, sample)
        for bucket, tensor in zip(collected, tensors, strict=True):
            bucket.append(tensor.detach().float().numpy())
    outputs = [np.concatenate(parts) for parts in collected]
    return Reference(
        outputs=outputs,
        output_specs=output_specs,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, inputs, samples.sample(0)),
        sha256=state_dict_sha256(model),
    )


def count_macs(model: torch.nn.Module, inputs: list[TensorSpec], sample: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2, from PyTorch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run_model(model, inputs, sample)
    return int(counter.get_total_flops() // 2)


def state_dict_sha256(model: torch.nn.Module) -> str:
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()
