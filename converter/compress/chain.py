"""Apply a chain of compression steps to the source model, caching every prefix.

Variants that share steps share the work: ``("prune:channel:bn-scale:0.3",)`` is computed once
for the ONNX, TFLite and Core ML variants that ask for it, and ``(distill, fuse)`` reuses the
distilled student of ``(distill,)``. Every step works on a copy; cached models are never
modified.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from converter.compress.env import StepEnv
from converter.compress.nas_step import SearchStep
from converter.compress.steps import (
    ChannelPruneStep,
    DistillStep,
    FuseStep,
    Step,
    TernaryStep,
    UnstructuredPruneStep,
)
from converter.errors import CompressionError, ConverterError
from edgeship.contract.errors import first_line

if TYPE_CHECKING:
    import torch


@dataclass
class StepRecord:
    """What one step did, for the report: its label, facts and time."""

    label: str
    details: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.label, "seconds": self.seconds, **self.details}


@dataclass
class CompressedModel:
    """The model after a chain of steps, with one record per step."""

    module: torch.nn.Module
    steps: tuple[Step, ...]
    records: list[StepRecord] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.records]


def run_step(model: torch.nn.Module, step: Step, env: StepEnv) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Apply one step to (a copy of) ``model``."""
    from converter.compress import channels, distill, fuse, prune, ternary
    from converter.compress.nas import search_architecture

    runners: dict[type, Callable[..., tuple[Any, dict[str, Any]]]] = {
        FuseStep: lambda m, s, e: fuse.fuse_conv_bn(m),
        UnstructuredPruneStep: prune.prune_unstructured,
        ChannelPruneStep: channels.prune_channels,
        SearchStep: search_architecture,
        DistillStep: distill.distill,
        TernaryStep: ternary.ternarize,
    }
    return runners[type(step)](model, step, env)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads (0: leave torch's setting alone)."""
    import torch

    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class ModelChain:
    """The source model and every compressed version of it asked for so far.

    Example:
        >>> chain = ModelChain(module, env)
        >>> pruned = chain.apply((ChannelPruneStep(0.3),))
        >>> pruned.module, pruned.records[0].details["macs_ratio"]
    """

    def __init__(self, source: torch.nn.Module, env: StepEnv) -> None:
        self.env = env
        self._cache: dict[tuple[Step, ...], CompressedModel] = {(): CompressedModel(source, ())}
        self._failed: dict[tuple[Step, ...], CompressionError] = {}

    def apply(self, steps: tuple[Step, ...]) -> CompressedModel:
        """The model after ``steps`` (computed once per distinct prefix).

        Raises:
            CompressionError: a step failed; the same error is raised for every chain that
                starts with the failed prefix.
        """
        steps = tuple(steps)
        for length in range(1, len(steps) + 1):
            prefix = steps[:length]
            if prefix in self._failed:
                raise self._failed[prefix]
            if prefix in self._cache:
                continue
            previous = self._cache[prefix[:-1]]
            step = prefix[-1]
            self.env.progress.say(f"compress: {' -> '.join(s.label() for s in prefix)}")
            started = time.monotonic()
            try:
                with torch_threads(self.env.training.threads):
                    module, details = run_step(previous.module, step, self.env)
            except ConverterError as err:
                if not isinstance(err, CompressionError):
                    raise  # bad input (a student factory that does not load) stops the run
                self._failed[prefix] = err
                raise
            except Exception as err:  # a step that crashes fails its variants, not the run
                self._failed[prefix] = CompressionError(
                    f"{step.label()}: {type(err).__name__}: {first_line(err)}")
                raise self._failed[prefix] from err
            record = StepRecord(step.label(), details, round(time.monotonic() - started, 2))
            self._cache[prefix] = CompressedModel(module, prefix, [*previous.records, record])
        return self._cache[steps]
