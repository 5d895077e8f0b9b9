"""Compression steps a recipe chains before export: parsed from the recipe, no torch needed.

A step is written as the string the manifest records (``compression``), or as a table holding
that string under ``step`` plus keyword overrides::

    steps = [
        "fuse",                                   # Conv+BN folded (ReLU left to the runtime)
        "prune:l1-unstructured:global:0.5",       # or ...:layer:0.5 (each layer to 50%)
        "prune:channel:bn-scale:0.3",             # or prune:channel:l1:0.3
        "distill:T4->1:alpha0.5",                 # student from [compression] student
        "search:width+depth:0.5x",                # architecture search (converter.compress.nas_step)
        { step = "distill:T4->1:alpha0.5:teachers2:confidence",    # several teachers
          teachers = ["examples.digits_teachers:wide"] },
        { step = "ternary:per-channel:0.7", keep = ["features.0", "head.3"] },
        { step = "distill:T4->1:alpha0.5", student = "examples.digits:student", epochs = 40,
          features = { "features.3" = "features.4" } },
        { step = "prune:channel:l1:0.3", keep = ["head.1"], fine_tune_epochs = 3 },
    ]

Each step is a frozen dataclass; equal steps compare equal, so a chain (a tuple of steps) is a
cache key and chains that share a prefix share its work. :meth:`label` is the manifest string.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from converter.compress.nas_step import SearchStep, parse_search_step
from converter.errors import RecipeError

#: importance criteria for channel pruning.
CHANNEL_IMPORTANCE = ("bn-scale", "l1")
#: scopes for unstructured pruning: one threshold for all layers, or each layer to the amount.
UNSTRUCTURED_SCOPES = ("global", "layer")
#: how several distillation teachers are combined: fixed weights, or per sample by the teacher's
#: confidence (its top softmax probability) or by its probability of the true label.
TEACHER_WEIGHTINGS = ("fixed", "confidence", "true-label")
#: how a ternary step scales each output channel's {-1, 0, +1}: TWN's mean, or a trained scale.
TERNARY_SCALES = ("mean", "learned")


@dataclass(frozen=True)
class Training:
    """How steps that train (fine-tune after pruning, distillation) do it.

    Attributes:
        epochs: distillation epochs (the student trains from scratch).
        fine_tune_epochs: epochs of fine-tuning after pruning when ``--train`` is given
            (0 switches fine-tuning off).
        lr: Adam learning rate for distillation; fine-tuning uses ``fine_tune_lr``.
        fine_tune_lr: Adam learning rate for fine-tuning a pruned model.
        batch_size: training batch size (samples, not model batches).
        seed: seed for shuffling and the student's initialisation.
        threads: torch threads while a step trains (small models train fastest on one, and
            the host is often shared); 0 keeps torch's default.
    """

    epochs: int = 30
    fine_tune_epochs: int = 5
    lr: float = 3e-3
    fine_tune_lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True)
class FuseStep:
    """Fold every BatchNorm that follows a convolution into the convolution's weights."""

    def label(self) -> str:
        return "fuse"

    @property
    def trains(self) -> bool:
        return False


@dataclass(frozen=True)
class UnstructuredPruneStep:
    """L1-magnitude unstructured pruning of Conv/Linear weights; masks made permanent.

    Attributes:
        amount: share of weights set to zero, in (0, 1).
        scope: ``global`` (one magnitude threshold over all layers) or ``layer``.
        fine_tune_epochs: fine-tuning epochs with the masks on (``None``: the recipe's).
        keep: module names left dense.
    """

    amount: float
    scope: str = "global"
    fine_tune_epochs: int | None = None
    keep: tuple[str, ...] = ()

    def label(self) -> str:
        return f"prune:l1-unstructured:{self.scope}:{self.amount:g}"

    @property
    def trains(self) -> bool:
        return True


@dataclass(frozen=True)
class ChannelPruneStep:
    """Structured channel pruning through torch-pruning's dependency graph.

    Attributes:
        amount: share of channels removed from every prunable layer, in (0, 1).
        importance: ``bn-scale`` (|gamma| of the BatchNorm after the conv) or ``l1``.
        fine_tune_epochs: fine-tuning epochs after pruning (``None``: the recipe's).
        keep: module names never pruned, on top of the classifier head (found automatically).
    """

    amount: float
    importance: str = "bn-scale"
    fine_tune_epochs: int | None = None
    keep: tuple[str, ...] = ()

    def label(self) -> str:
        return f"prune:channel:{self.importance}:{self.amount:g}"

    @property
    def trains(self) -> bool:
        return True


@dataclass(frozen=True)
class DistillStep:
    """Train a student (its own factory) from the current model (and more teachers) as teacher.

    Loss: ``(1 - alpha) * T² * KL(teacher_T || student_T) + alpha * CE(student, labels)``,
    plus ``feature_weight * MSE`` on each ``features`` pair (student layer → layer of the
    current model, through a learned 1x1 adapter when the channel counts differ). ``T`` goes
    linearly from ``temperature[0]`` to ``temperature[1]`` over the epochs. With ``teachers``
    the soft target is a mixture of the current model's and theirs, weighted by ``weighting``
    (:data:`TEACHER_WEIGHTINGS`; ``teacher_weights`` for ``fixed``, current model first).
    """

    student: str
    temperature: tuple[float, float] = (4.0, 1.0)
    alpha: float = 0.5
    epochs: int | None = None
    features: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0
    teachers: tuple[str, ...] = ()
    weighting: str = "fixed"
    teacher_weights: tuple[float, ...] = ()

    def label(self) -> str:
        t0, t1 = self.temperature
        temp = f"T{t0:g}" if t0 == t1 else f"T{t0:g}->{t1:g}"
        label = f"distill:{temp}:alpha{self.alpha:g}"
        if not self.teachers:
            return label
        weighting = self.weighting
        if weighting == "fixed" and self.teacher_weights:
            weighting += ",".join(f"{w:g}" for w in self.teacher_weights)
        return f"{label}:teachers{len(self.teachers) + 1}:{weighting}"

    @property
    def trains(self) -> bool:
        return True


@dataclass(frozen=True)
class TernaryStep:
    """Ternary Conv/Linear weights: each output channel becomes ``scale_c * {-1, 0, +1}``.

    Attributes:
        threshold: weights with ``|w| <= threshold * mean|W_c|`` become 0 (TWN: 0.7).
        scale: ``mean`` (mean |w| of the kept weights, recomputed every step) or ``learned``
            (starts there and is trained).
        fine_tune_epochs: straight-through fine-tuning epochs (``None``: the recipe's).
        keep: module names left in float (e.g. the first and the last layer).
    """

    threshold: float = 0.7
    scale: str = "mean"
    fine_tune_epochs: int | None = None
    keep: tuple[str, ...] = ()

    def label(self) -> str:
        return f"ternary:per-channel:{self.threshold:g}" + (":learned" if self.scale == "learned" else "")

    @property
    def trains(self) -> bool:
        return True


Step = FuseStep | UnstructuredPruneStep | ChannelPruneStep | DistillStep | TernaryStep | SearchStep


@dataclass(frozen=True)
class CompressionDefaults:
    """The recipe's ``[compression]`` section: default chain, student and training settings."""

    steps: tuple[Step, ...] = ()
    student: str | None = None
    training: Training = field(default_factory=Training)


def chain_label(steps: tuple[Step, ...]) -> list[str]:
    """The manifest strings of a chain, in order."""
    return [s.label() for s in steps]


def needs_training_data(steps: tuple[Step, ...]) -> bool:
    """Whether the chain cannot run without ``--train`` (distillation trains from scratch, an
    architecture search fine-tunes and ranks its candidates on it)."""
    return any(isinstance(s, DistillStep | SearchStep) for s in steps)


# --------------------------------------------------------------------------- parsing

_TRAINING_KEYS = {f.name for f in dataclasses.fields(Training)}
_SECTION_KEYS = {"steps", "student"} | _TRAINING_KEYS
_TEMPERATURE = re.compile(r"^T(\d+(?:\.\d+)?)(?:->(\d+(?:\.\d+)?))?$")
_ALPHA = re.compile(r"^alpha(\d*\.?\d+)$")
_TEACHERS = re.compile(r"^teachers(\d+)$")
_FIXED = re.compile(r"^fixed((?:\d*\.?\d+)(?:,\d*\.?\d+)*)?$")


def parse_compression_section(data: dict[str, Any], where: str) -> CompressionDefaults:
    """Parse ``[compression]``: ``steps``, ``student`` and :class:`Training` keys.

    Raises:
        RecipeError: an unknown key, a bad value or a bad step.
    """
    unknown = set(data) - _SECTION_KEYS
    if unknown:
        raise RecipeError(f"{where} [compression]: unknown key(s) {sorted(unknown)}; "
                          f"known: {sorted(_SECTION_KEYS)}")
    training_values = {k: v for k, v in data.items() if k in _TRAINING_KEYS}
    for name, value in training_values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise RecipeError(f"{where} [compression]: {name} must be a non-negative number, "
                              f"got {value!r}")
        if name in ("epochs", "batch_size", "lr", "fine_tune_lr") and value == 0:
            raise RecipeError(f"{where} [compression]: {name} must be positive")
    ints = {"epochs", "fine_tune_epochs", "batch_size", "seed", "threads"}
    training = Training(**{k: int(v) if k in ints else float(v) for k, v in training_values.items()})
    student = data.get("student")
    if student is not None and (not isinstance(student, str) or ":" not in student):
        raise RecipeError(f"{where} [compression]: student must be 'package.module:factory', "
                          f"got {student!r}")
    steps = parse_steps(data.get("steps", []), f"{where} [compression]", student)
    return CompressionDefaults(steps, student, training)


def parse_steps(entries: Any, where: str, default_student: str | None = None) -> tuple[Step, ...]:
    """Parse a ``steps`` list (strings or tables) into a chain, checking the order.

    Raises:
        RecipeError: not a list, an unknown step, a bad parameter, or an impossible order
            (BN-scale channel pruning after ``fuse`` removed the BatchNorms).
    """
    if not isinstance(entries, list):
        raise RecipeError(f"{where}: steps must be a list, got {entries!r}")
    steps = tuple(parse_step(entry, where, default_student) for entry in entries)
    fused = False
    for step in steps:
        if isinstance(step, FuseStep | DistillStep):
            fused = isinstance(step, FuseStep)  # a student brings its own BatchNorms
        elif isinstance(step, ChannelPruneStep) and step.importance == "bn-scale" and fused:
            raise RecipeError(
                f"{where}: {step.label()} after 'fuse': fusion removed the BatchNorm scales; "
                "put 'fuse' last or use prune:channel:l1"
            )
    return steps


def parse_step(entry: Any, where: str, default_student: str | None = None) -> Step:
    """One step from its string (``"prune:channel:l1:0.3"``) or table form.

    Raises:
        RecipeError: the step or one of its parameters is not recognised.
    """
    overrides: dict[str, Any] = {}
    if isinstance(entry, dict):
        overrides = dict(entry)
        text = overrides.pop("step", None)
        if not isinstance(text, str):
            raise RecipeError(f"{where}: a step table needs step = \"...\", got {entry!r}")
    elif isinstance(entry, str):
        text = entry
    else:
        raise RecipeError(f"{where}: a step is a string or a table, got {entry!r}")
    parts = text.strip().split(":")
    head, declared = parts[0], None
    try:
        if head == "fuse" and len(parts) == 1:
            step: Step = FuseStep()
        elif head == "prune" and len(parts) >= 2 and parts[1] == "l1-unstructured":
            step = _unstructured(parts[2:])
        elif head == "prune" and len(parts) >= 2 and parts[1] == "channel":
            step = _channel(parts[2:])
        elif head == "distill":
            step, declared = _distill(parts[1:], default_student)
        elif head == "ternary":
            step = _ternary(parts[1:])
        elif head == "search":  # its own module parses its many keys
            step, overrides = parse_search_step(parts[1:], overrides), {}
        else:
            raise ValueError("unknown step; known: fuse, prune:l1-unstructured:SCOPE:AMOUNT, "
                             "prune:channel:IMPORTANCE:AMOUNT, distill:T<start>->"
                             "<end>:alpha<weight>[:teachers<N>:<weighting>], "
                             "ternary[:per-channel][:THRESHOLD][:learned], "
                             "search:width[+depth]:<ms>ms|<ratio>x")
        step = _with_overrides(step, overrides)
        if isinstance(step, DistillStep) and declared is not None \
                and declared != len(step.teachers) + 1:
            raise ValueError(f"teachers{declared} needs {declared - 1} teacher factories in "
                             f"teachers = [...], got {len(step.teachers)}")
        _check(step)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: step {text!r}: {err}") from None
    return step


def _unstructured(params: list[str]) -> UnstructuredPruneStep:
    if len(params) != 2:
        raise ValueError("expected prune:l1-unstructured:global|layer:AMOUNT")
    return UnstructuredPruneStep(amount=float(params[1]), scope=params[0])


def _channel(params: list[str]) -> ChannelPruneStep:
    if len(params) != 2:
        raise ValueError("expected prune:channel:bn-scale|l1:AMOUNT")
    return ChannelPruneStep(amount=float(params[1]), importance=params[0])


def _distill(params: list[str], default_student: str | None) -> tuple[DistillStep, int | None]:
    """The step and the teacher count its string declares (``teachers<N>``), if any."""
    temperature, alpha, declared = (4.0, 1.0), 0.5, None
    weighting, weights = "fixed", ()
    for part in params:
        t_match, a_match = _TEMPERATURE.match(part), _ALPHA.match(part)
        n_match, f_match = _TEACHERS.match(part), _FIXED.match(part)
        if t_match:
            start = float(t_match.group(1))
            temperature = (start, float(t_match.group(2) or start))
        elif a_match:
            alpha = float(a_match.group(1))
        elif n_match:
            declared = int(n_match.group(1))
        elif f_match:
            weighting = "fixed"
            weights = tuple(float(w) for w in (f_match.group(1) or "").split(",") if w)
        elif part in TEACHER_WEIGHTINGS:
            weighting = part
        else:
            raise ValueError(f"{part!r} is neither T<start>[-><end>], alpha<weight>, "
                             f"teachers<N> nor one of {', '.join(TEACHER_WEIGHTINGS)}")
    step = DistillStep(student=default_student or "", temperature=temperature, alpha=alpha,
                       weighting=weighting, teacher_weights=weights)
    return step, declared


def _ternary(params: list[str]) -> TernaryStep:
    threshold, scale = 0.7, "mean"
    for part in params:
        if part == "per-channel":
            continue
        if part in TERNARY_SCALES:
            scale = part
        else:
            try:
                threshold = float(part)
            except ValueError:
                raise ValueError(f"{part!r} is neither per-channel, a threshold nor one of "
                                 f"{', '.join(TERNARY_SCALES)}") from None
    return TernaryStep(threshold=threshold, scale=scale)


_OVERRIDES: dict[type, set[str]] = {
    FuseStep: set(),
    UnstructuredPruneStep: {"fine_tune_epochs", "keep"},
    ChannelPruneStep: {"fine_tune_epochs", "keep"},
    DistillStep: {"student", "epochs", "features", "feature_weight", "temperature", "alpha",
                  "teachers", "weighting", "teacher_weights"},
    TernaryStep: {"fine_tune_epochs", "keep", "threshold", "scale"},
    SearchStep: set(),  # applied by parse_search_step
}


def _with_overrides(step: Step, overrides: dict[str, Any]) -> Step:
    allowed = _OVERRIDES[type(step)]
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; known: {sorted(allowed) or 'none'}")
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "keep":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("keep must be a list of module names")
            values[key] = tuple(value)
        elif key == "features":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ValueError('features must be a table { "student.layer" = "teacher.layer" }')
            values[key] = tuple(sorted(value.items()))
        elif key == "temperature":
            values[key] = _temperature_value(value)
        elif key in ("fine_tune_epochs", "epochs"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer")
            values[key] = value
        elif key == "student":
            values[key] = str(value)
        elif key == "teachers":
            if not isinstance(value, list) or not all(isinstance(v, str) and ":" in v for v in value):
                raise ValueError("teachers must be a list of 'package.module:factory' strings")
            values[key] = tuple(value)
        elif key in ("weighting", "scale"):
            values[key] = str(value)
        elif key == "teacher_weights":
            if not isinstance(value, list) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                raise ValueError("teacher_weights must be a list of numbers")
            values[key] = tuple(float(v) for v in value)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            values[key] = float(value)
    return dataclasses.replace(step, **values) if values else step


def _temperature_value(value: Any) -> tuple[float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value), float(value))
    if isinstance(value, list) and len(value) == 2:
        return (float(value[0]), float(value[1]))
    if isinstance(value, str):
        match = _TEMPERATURE.match(value if value.startswith("T") else f"T{value}")
        if match:
            start = float(match.group(1))
            return (start, float(match.group(2) or start))
    raise ValueError(f"temperature must be a number, [start, end] or 'start->end', got {value!r}")


def _check(step: Step) -> None:
    if isinstance(step, UnstructuredPruneStep | ChannelPruneStep) and not 0 < step.amount < 1:
        raise ValueError(f"amount must be in (0, 1), got {step.amount:g}")
    if isinstance(step, UnstructuredPruneStep) and step.scope not in UNSTRUCTURED_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(UNSTRUCTURED_SCOPES)}")
    if isinstance(step, ChannelPruneStep) and step.importance not in CHANNEL_IMPORTANCE:
        raise ValueError(f"importance must be one of {', '.join(CHANNEL_IMPORTANCE)}")
    if isinstance(step, DistillStep):
        if ":" not in step.student:
            raise ValueError("needs a student factory: student = 'package.module:factory' in the "
                             "step table or in [compression]")
        if not 0 <= step.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {step.alpha:g}")
        if min(step.temperature) <= 0:
            raise ValueError("temperatures must be positive")
        _check_teachers(step)
    if isinstance(step, TernaryStep):
        if not 0 < step.threshold < 2:
            raise ValueError(f"threshold must be in (0, 2) times mean|W|, got {step.threshold:g}")
        if step.scale not in TERNARY_SCALES:
            raise ValueError(f"scale must be one of {', '.join(TERNARY_SCALES)}")


def _check_teachers(step: DistillStep) -> None:
    if step.weighting not in TEACHER_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(TEACHER_WEIGHTINGS)}")
    if not step.teacher_weights:
        return
    if step.weighting != "fixed":
        raise ValueError(f"teacher_weights are for weighting 'fixed', not {step.weighting!r}")
    if len(step.teacher_weights) != len(step.teachers) + 1:
        raise ValueError(f"teacher_weights needs {len(step.teachers) + 1} weights (the current "
                         f"model first, then each teacher), got {len(step.teacher_weights)}")
    if min(step.teacher_weights) < 0 or sum(step.teacher_weights) <= 0:
        raise ValueError("teacher_weights must be non-negative with a positive sum")
