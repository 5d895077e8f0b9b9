"""``search``: hardware-aware architecture search under a latency budget measured on onnxruntime.

Each candidate is the user's model with stage widths narrowed and residual blocks dropped
(:mod:`~converter.compress.nas_space`, :mod:`~converter.compress.nas_candidate`), exported
and timed on onnxruntime like a variant. Candidates within the budget are fine-tuned briefly
(cross-entropy on the labels plus distillation from the source model) and scored on a held-out
share of ``--train`` (the eval set is never used for choices). The most accurate candidate within
the budget continues down the chain; the report gets every candidate, the Pareto front and the
reason the search stopped (time budget, candidate limit, nothing left to try).
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.compress import nas_policy
from converter.compress.env import StepEnv
from converter.compress.nas_candidate import LatencyProbe, Timing, build_candidate, measure_latency
from converter.compress.nas_space import Architecture, SearchSpace, derive_space
from converter.compress.nas_step import SearchStep
from converter.data import SampleSet
from converter.errors import CompressionError
from converter.specs import TensorSpec

if TYPE_CHECKING:
    import torch

    from converter.compress.training import TrainingSet

#: share of ``--train`` held out to rank candidates (at most :data:`MAX_VALIDATION_ROWS`).
VALIDATION_SHARE = 0.2
MAX_VALIDATION_ROWS = 1000
#: distillation temperature of the fine-tuning loss.
TEMPERATURE = 2.0


@dataclass
class Candidate:
    """One measured architecture: what it costs, how good it is, whether it was kept."""

    arch: Architecture
    params: int
    macs: int
    timing: Timing
    quality: float | None
    fine_tune: list[dict[str, Any]]
    seconds: float
    module: Any = field(default=None, repr=False)

    def point(self) -> nas_policy.Point:
        return nas_policy.Point(self.arch, self.timing.latency_ms, self.quality)

    def to_dict(self, budget_ms: float, front: set[Architecture],
                chosen: Architecture | None) -> dict[str, Any]:
        return {"arch": self.arch.label(), "widths": list(self.arch.widths),
                "depths": list(self.arch.depths), "params": self.params, "macs": self.macs,
                "size_bytes": self.timing.size_bytes, "latency_ms": round(self.timing.latency_ms, 4),
                "within_budget": self.timing.latency_ms <= budget_ms,
                "quality": None if self.quality is None else round(self.quality, 5),
                "fine_tune_epochs": len(self.fine_tune), "seconds": round(self.seconds, 2),
                "on_front": self.arch in front, "chosen": self.arch == chosen}


def search_architecture(
    model: torch.nn.Module, step: SearchStep, env: StepEnv,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The most accurate candidate within the latency budget, and the search log.

    Args:
        clock: seconds, for the time budget (tests inject one).

    Raises:
        CompressionError: no training data, no prunable stage, onnxruntime failed, or no
            candidate within the latency budget before the search stopped.
    """
    from converter.reference import fit_check

    started = clock()
    deadline = started + step.seconds
    if env.train is None:
        raise CompressionError(f"{step.label()}: the search fine-tunes and ranks candidates on "
                               "training data (--train FILE.npz)")
    example = env.example_tensors()
    space = derive_space(model, example, step.widths, step.keep, depth=step.space == "width+depth")
    train, held_out = _split(env.train, env.inputs, env.training.seed)
    train = _with_source_outputs(train, model)
    metric = "validation accuracy" if held_out.labels is not None else "1 − relative error"
    source_outputs = _primary_outputs(model, held_out)
    env.progress.say(f"{step.label()}: {len(space.stages)} stages "
                     f"({', '.join(s.name for s in space.stages)}), {space.size():,} architectures, "
                     f"ranked by {metric} on {len(held_out)} held-out training rows")
    rng = random.Random(env.training.seed)
    candidates: list[Candidate] = []
    budget_ms = step.budget_ms or 0.0
    smallest = nas_policy.initial_ladder(space)[1]
    stopped = "nothing left to try"
    with tempfile.TemporaryDirectory(prefix="edgeship-nas-") as tmp:
        probe = _probe(env, fit_check(model, env.inputs, env.example), held_out, step, Path(tmp))
        while True:
            if len(candidates) >= step.max_candidates:
                stopped = "candidate limit"
                break
            if candidates and not nas_policy.fits_in_time(clock(), deadline, [c.seconds for c in candidates]):
                stopped = "time budget"
                break
            arch = nas_policy.propose(space, [c.point() for c in candidates], budget_ms, rng)
            if arch is None:
                break
            began = clock()
            candidate = _evaluate(model, space, arch, step, env, example, probe, train, held_out,
                                  source_outputs, budget_ms)
            candidate.seconds = clock() - began
            candidates.append(candidate)
            if len(candidates) == 1 and step.budget_ratio is not None:
                budget_ms = step.budget_ratio * candidate.timing.latency_ms
            env.progress.say(_line(step, candidate, budget_ms, len(candidates)))
            _keep_best_module(candidates, budget_ms, space.source())
            if arch == smallest and candidate.timing.latency_ms > budget_ms:
                stopped = "even the smallest architecture is over the latency budget"
                break
    points = [c.point() for c in candidates]
    front = {p.arch for p in nas_policy.front(points)}
    best = nas_policy.choose(points, budget_ms, space.source())
    log = _log(step, space, candidates, budget_ms, front, best, metric, len(held_out), stopped,
               clock() - started)
    if best is None:
        fastest = min(c.timing.latency_ms for c in candidates)
        raise CompressionError(
            f"{step.label()}: no candidate within the latency budget of {budget_ms:.3f} ms "
            f"({stopped} after {len(candidates)} candidates; fastest measured {fastest:.3f} ms)")
    chosen = next(c for c in candidates if c.arch == best.arch)
    env.progress.say(f"{step.label()}: chose {chosen.arch.label()}: p50 {chosen.timing.latency_ms:.3f} "
                     f"ms (budget {budget_ms:.3f}), {metric} {chosen.quality:.4f}; {stopped}")
    if chosen.arch == space.source():  # already within the budget: an unchanged copy goes on
        return copy.deepcopy(model).eval(), log
    final = env.training.fine_tune_epochs if step.final_epochs is None else step.final_epochs
    if final > 0:
        log["final_fine_tune"] = _fine_tune(chosen.module, train, step, env, "chosen: fine-tune", final)
        log["final_quality"] = round(_quality(chosen.module, held_out, source_outputs), 5)
    return chosen.module.eval(), log


def _evaluate(model: Any, space: SearchSpace, arch: Architecture, step: SearchStep, env: StepEnv,
              example: tuple, probe: LatencyProbe, train: TrainingSet, held_out: SampleSet,
              source_outputs: np.ndarray, budget_ms: float) -> Candidate:
    """Build, time, and (within the budget) fine-tune and score one architecture."""
    import torch

    source = arch == space.source()
    module = model if source else build_candidate(model, space, arch, example)
    timing = measure_latency(module, probe)
    facts = env.size_facts(module)
    history: list[dict[str, Any]] = []
    quality = None
    within = source or budget_ms <= 0 or timing.latency_ms <= budget_ms
    if within:
        if not source:
            torch.manual_seed(env.training.seed)
            history = _fine_tune(module, train, step, env, f"{arch.label()} fine-tune",
                                 step.fine_tune_epochs)
        quality = _quality(module, held_out, source_outputs)
    return Candidate(arch, facts["params"], facts["macs"], timing, quality, history, 0.0, module)


def _keep_best_module(candidates: list[Candidate], budget_ms: float, source: Architecture) -> None:
    """Free every candidate's module but the current choice's (models can be large)."""
    best = nas_policy.choose([c.point() for c in candidates], budget_ms, source)
    for c in candidates:
        if best is None or c.arch != best.arch:
            c.module = None


def _fine_tune(module: Any, train: TrainingSet, step: SearchStep, env: StepEnv, label: str,
               epochs: int) -> list[dict[str, Any]]:
    """Cross-entropy on the labels (weight ``alpha``) plus distillation from the source model;
    without labels, MSE to the source model's outputs (``train`` carries them after the
    inputs: :func:`_with_source_outputs`)."""
    from torch.nn import functional

    from converter.compress.training import fit, outputs_of

    if epochs <= 0:
        return []
    count = len(env.inputs)

    def loss_fn(inputs: list, labels: Any, _epoch: int) -> Any:
        outputs, targets = outputs_of(module, inputs[:count]), inputs[count:]
        if labels is None:
            return sum(functional.mse_loss(o, t) for o, t in zip(outputs, targets, strict=True))
        logits = outputs[0].reshape(len(labels), -1)
        soft = functional.kl_div(
            functional.log_softmax(logits / TEMPERATURE, dim=1),
            functional.softmax(targets[0].reshape(len(labels), -1) / TEMPERATURE, dim=1),
            reduction="batchmean") * TEMPERATURE ** 2
        return step.alpha * functional.cross_entropy(logits, labels) + (1 - step.alpha) * soft

    return fit(module, train, loss_fn, epochs=epochs, lr=env.training.fine_tune_lr,
               batch_size=env.training.batch_size, seed=env.training.seed, progress=env.progress,
               label=f"{step.label()} {label}")


def _with_source_outputs(train: TrainingSet, source: Any) -> TrainingSet:
    """``train`` with the source model's outputs appended to its inputs: computed once, they
    are the distillation targets of every candidate (batches shuffle them along)."""
    import torch

    from converter.compress.training import EVAL_CHUNK, TrainingSet, outputs_of

    parts: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(train), EVAL_CHUNK):
            parts.append(outputs_of(source.eval(), [x[start : start + EVAL_CHUNK] for x in train.inputs]))
    outputs = [torch.cat([p[i] for p in parts]).detach().clone() for i in range(len(parts[0]))]
    return TrainingSet([*train.inputs, *outputs], train.labels)


def _split(data: TrainingSet, specs: list[TensorSpec], seed: int) -> tuple[TrainingSet, SampleSet]:
    """A seeded split of ``--train``: rows to fine-tune on, and held-out rows to rank with."""
    from converter.compress.training import TrainingSet

    rows = len(data)
    held = min(MAX_VALIDATION_ROWS, max(1, int(rows * VALIDATION_SHARE)))
    if rows - held < 1:
        raise CompressionError(f"search: {rows} training rows are too few to fine-tune and rank "
                               "candidates (need at least 2)")
    order = np.random.default_rng(seed).permutation(rows)
    fit_rows, rank_rows = order[held:], order[:held]
    labels = data.labels
    train = TrainingSet([x[fit_rows] for x in data.inputs], None if labels is None else labels[fit_rows])
    arrays = {s.name: x[rank_rows].numpy() for s, x in zip(specs, data.inputs, strict=True)}
    held_out = SampleSet(specs, arrays, None if labels is None else labels[rank_rows].numpy())
    return train, held_out


def _primary_outputs(model: Any, samples: SampleSet) -> np.ndarray:
    from converter.compress.training import predict

    return predict(model, samples)[0]


def _quality(module: Any, samples: SampleSet, source_outputs: np.ndarray) -> float:
    """Top-1 accuracy with labels; else 1 − relative squared error against the source model."""
    from edgeship.contract.fidelity import accuracy

    outputs = _primary_outputs(module, samples)
    if samples.labels is not None and samples.labels.dtype.kind in "iu":
        return float(accuracy(outputs, samples.labels))
    error = float(np.sum((outputs - source_outputs) ** 2) / max(np.sum(source_outputs ** 2), 1e-12))
    return max(0.0, 1.0 - error)


def _probe(env: StepEnv, outputs: list, held_out: SampleSet, step: SearchStep, tmp: Path) -> LatencyProbe:
    """Timing samples: the first held-out rows, shaped as the model's input specs."""
    samples = held_out.head(step.latency_samples)
    path = tmp / "latency_inputs.npz"
    np.savez(path, **samples.arrays)
    return LatencyProbe(env.inputs, outputs, samples, path)


def _line(step: SearchStep, c: Candidate, budget_ms: float, n: int) -> str:
    verdict = "within" if c.timing.latency_ms <= budget_ms else "over"
    quality = "not trained" if c.quality is None else f"quality {c.quality:.4f}"
    return (f"{step.label()}: #{n} {c.arch.label()}: p50 {c.timing.latency_ms:.3f} ms ({verdict} "
            f"{budget_ms:.3f}), {c.params:,} params, {quality}, {c.seconds:.1f} s")


def _log(step: SearchStep, space: SearchSpace, candidates: list[Candidate], budget_ms: float,
         front: set[Architecture], best: nas_policy.Point | None, metric: str, held_out: int,
         stopped: str, elapsed: float) -> dict[str, Any]:
    source = candidates[0]
    chosen = next((c for c in candidates if best is not None and c.arch == best.arch), None)
    log: dict[str, Any] = {
        "space": space.to_dict(), "budget_ms": round(budget_ms, 4),
        "budget": (f"{step.budget_ratio:g} × source p50 {source.timing.latency_ms:.3f} ms"
                   if step.budget_ratio is not None else f"{step.budget_ms:g} ms"),
        "time_budget_seconds": step.seconds, "elapsed_seconds": round(elapsed, 2),
        "stopped": stopped, "runtime": source.timing.runtime, "metric": metric,
        "held_out_rows": held_out,
        "candidates": [c.to_dict(budget_ms, front, best.arch if best else None) for c in candidates],
    }
    if chosen is not None:
        log.update({"chosen": chosen.arch.label(),
                    "params_before": source.params, "params_after": chosen.params,
                    "macs_before": source.macs, "macs_after": chosen.macs,
                    "macs_ratio": round(chosen.macs / max(source.macs, 1), 4),
                    "latency_ratio": round(chosen.timing.latency_ms / source.timing.latency_ms, 4)})
    return log
