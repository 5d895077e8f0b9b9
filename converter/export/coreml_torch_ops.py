"""PyTorch op converters that coremltools 9.0 lacks or gets wrong, registered before converting.

Real ``transformers`` models hit two gaps of the 9.0 release on the TorchScript path:

* ``aten::Int`` / ``aten::Bool`` on a shape-derived length-1 constant (``int(h * w)``, sequence
  lengths) call ``int()`` on a 1-element array, which numpy >= 2.4 refuses ("only
  0-dimensional arrays can be converted to Python scalars"; coremltools#2633, fixed on its
  main branch, not released). Here the value is read with ``.item()``.
* ``aten::new_ones`` (transformers' attention masks: ``q_idx.new_ones((), dtype=torch.bool)``)
  has no converter. Here it is a constant (static shape) or a ``fill``, in the requested dtype.
* ``aten::diff`` (transformers' packed-sequence check on position ids, in every decoder LM)
  has no converter; ``aten::alias`` (left by the core ATen decompositions on the
  ``torch.export`` path) neither. Here ``diff`` is concat + two slices + sub, ``alias`` the
  identity.

:func:`register` overrides the registry entries once per process, through coremltools'
public ``register_torch_op(override=True)``; every other op keeps coremltools' converter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_registered = False


def register() -> None:
    """Install the converters below in coremltools' torch op registry (idempotent)."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil.frontend.torch import register_torch_op

    register_torch_op(_int, torch_alias=["int"], override=True)
    register_torch_op(_bool, torch_alias=["bool"], override=True)
    register_torch_op(new_ones, override=True)
    register_torch_op(diff, override=True)
    register_torch_op(alias, override=True)
    _registered = True


def _int(context: Any, node: Any) -> None:
    _cast(context, node, int, "int32")


def _bool(context: Any, node: Any) -> None:
    _cast(context, node, bool, "bool")


def _cast(context: Any, node: Any, python_type: type, mil_dtype: str) -> None:
    """``int(x)`` / ``bool(x)`` of a scalar or a length-1 tensor (folded when constant)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    x = _get_inputs(context, node, expected=1)[0]
    if any(d != 1 for d in x.shape):
        raise ValueError(f"{node.kind}: input must be a scalar or a length-1 tensor, got {x.shape}")
    if x.can_be_folded_to_const():
        result = mb.const(val=python_type(np.asarray(x.val).item()), name=node.name)
    else:
        if len(x.shape) > 0:
            x = mb.squeeze(x=x, name=node.name + "_item")
        result = mb.cast(x=x, dtype=mil_dtype, name=node.name)
    context.add(result, node.name)


def new_ones(context: Any, node: Any) -> None:
    """``x.new_ones(size, dtype=...)``: ones of ``size`` in ``dtype`` (``x``'s by default)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs

    inputs = _get_inputs(context, node, min_expected=2)
    x, size = inputs[0], inputs[1]
    dtype = inputs[2] if len(inputs) > 2 else None
    dtype = _get_kwinputs(context, node, "dtype", default=[dtype])[0]
    np_dtype = _numpy_dtype(x, dtype)
    if isinstance(size, list):
        size = mb.concat(values=size, axis=0)
    if size.can_be_folded_to_const():
        shape = tuple(int(d) for d in np.asarray(size.val).reshape(-1))
        result = mb.const(val=np.ones(shape, dtype=np_dtype), name=node.name)
    else:
        result = mb.fill(shape=size, value=np_dtype.type(1), name=node.name)
    context.add(result, node.name)


def diff(context: Any, node: Any) -> None:
    """``torch.diff(x, n, dim, prepend, append)``: ``n`` times ``x[1:] - x[:-1]`` along ``dim``."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    inputs = _get_inputs(context, node, min_expected=1)
    x = inputs[0]
    n = _const_int(inputs, 1, 1)
    dim = _const_int(inputs, 2, -1)
    prepend = inputs[3] if len(inputs) > 3 else None
    append = inputs[4] if len(inputs) > 4 else None
    rank = len(x.shape)
    dim = dim % rank
    parts = [v for v in (prepend, x, append) if v is not None]
    if len(parts) > 1:
        x = mb.concat(values=parts, axis=dim)
    for step in range(n):
        length = x.shape[dim]
        begin_hi, end_lo = [0] * rank, list(x.shape)
        begin_hi[dim], end_lo[dim] = 1, length - 1
        later = mb.slice_by_index(x=x, begin=begin_hi, end=list(x.shape))
        earlier = mb.slice_by_index(x=x, begin=[0] * rank, end=end_lo)
        name = node.name if step == n - 1 else f"{node.name}_{step}"
        x = mb.sub(x=later, y=earlier, name=name)
    context.add(x, node.name)


def alias(context: Any, node: Any) -> None:
    """``aten::alias``: the input itself."""
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    context.add(_get_inputs(context, node, min_expected=1)[0], torch_name=node.name)


def _const_int(inputs: list[Any], index: int, default: int) -> int:
    if len(inputs) <= index or inputs[index] is None:
        return default
    value = getattr(inputs[index], "val", inputs[index])
    return default if value is None else int(np.asarray(value).item())


def _numpy_dtype(x: Any, dtype: Any) -> np.dtype:
    """The dtype a MIL tensor can hold for torch dtype ``dtype`` (a dtype number or None)."""
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_NUMPY_DTYPE
    from coremltools.converters.mil.mil import types

    value = getattr(dtype, "val", dtype)
    if value is None:
        found = np.dtype(types.nptype_from_builtin(x.dtype))
    else:
        found = np.dtype(NUM_TO_NUMPY_DTYPE[int(value)])
    if found.kind in "iu":
        return np.dtype(np.int32)
    if found.kind == "f" and found != np.float16:
        return np.dtype(np.float32)
    return found
