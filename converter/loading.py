"""Load the model to convert: a ``package.module:factory`` path or a saved file."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

from converter.errors import ModelLoadError

if TYPE_CHECKING:
    import torch


def load_model(source: str) -> torch.nn.Module:
    """Load a ``torch.nn.Module`` in eval mode.

    Args:
        source: ``package.module:factory`` (a callable returning the module with its weights
            loaded; the current directory is importable), or a path to a file saved with
            ``torch.save(module)`` (``.pt``/``.pth``) or ``torch.export.save`` (``.pt2``).

    Raises:
        ModelLoadError: the module or factory does not exist, the factory fails, the file is
            missing or holds something other than a module (e.g. a bare state_dict).
    """
    import torch

    if os.getcwd() not in sys.path:  # like `python -m`: the working directory is importable
        sys.path.insert(0, os.getcwd())
    path = Path(source)
    if path.suffix in {".pt", ".pth", ".pt2"} or path.exists():
        model = _load_file(path)
    elif ":" in source:
        model = _call_factory(source)
    else:
        raise ModelLoadError(
            f"model {source!r}: not a file and not a 'package.module:factory' path"
        )
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"model {source!r} gave a {type(model).__name__}, not a torch.nn.Module"
        )
    return as_eval(model)


def as_eval(model: torch.nn.Module) -> torch.nn.Module:
    """Switch to eval mode; modules from ``torch.export`` are already fixed and refuse it."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def _call_factory(source: str) -> object:
    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(f"model factory {source!r}: cannot import {module_name!r}: {err}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelLoadError(f"model factory {source!r}: {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise ModelLoadError(f"model factory {source!r} is not callable")
    try:
        return factory()
    except Exception as err:  # a factory is user code: any failure is a load failure
        raise ModelLoadError(f"model factory {source!r} failed: {type(err).__name__}: {err}") from err


def _fixed_mode(module: torch.nn.Module) -> torch.nn.Module:
    """A ``torch.export`` module keeps the mode it was exported in and raises on ``eval()``;
    exporters call ``eval()`` on whatever they get, so make ``train``/``eval`` no-ops."""
    module.train = types.MethodType(lambda self, mode=True: self, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(lambda self: self, module)  # type: ignore[method-assign]
    return module


def _load_file(path: Path) -> object:
    import torch

    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    try:
        if path.suffix == ".pt2":
            return _fixed_mode(torch.export.load(str(path)).module())
        # weights_only=False unpickles code: only load model files you trust.
        loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelLoadError(f"model file {str(path)!r} cannot be loaded: {err}") from err
    if isinstance(loaded, dict):
        raise ModelLoadError(
            f"model file {str(path)!r} holds a state_dict, not a module: pass a "
            "'package.module:factory' that builds the module and loads it"
        )
    return loaded
