"""Recipes: which variants to build, with which options, and the gates each must pass.

A recipe is TOML. Every key is optional; what is left out takes the default::

    [gates]                       # for every variant unless the variant overrides it
    max_accuracy_drop = 0.005     # ratio: 0.005 = half a point of accuracy (labels)
    min_agreement = 0.99          # classification: top-1 agreement with the PyTorch reference
    min_cosine = 0.99             # default for embedding and generic tasks, each output
    max_rel_err = 0.05            # default for regression (0.1 generic): relative L2 error
    max_abs_err_fp32 = 1e-4       # fp32 variants only

    [validation]
    max_samples = 1000            # evaluation samples used per variant
    calibration_samples = 128
    golden_count = 16
    threads = 1                   # runtime threads while measuring latency
    agreement_cosine = 0.99       # non-classification: a sample agrees when cosine >= this

    [compression]                 # steps before export, see converter.compress.steps
    steps = ["fuse"]              # default chain for variants that do not set steps
    student = "examples.digits:student"   # distillation student factory
    epochs = 30                   # distillation epochs; fine_tune_epochs, lr, fine_tune_lr,
                                  # batch_size, seed, threads also go here

    [tuning]                      # when an int8 variant misses its gates
    max_trials = 12               # attempts after the first (calibration, float layers)
    max_seconds = 180             # per variant, sensitivity included
    skip_predicted = true         # skip static int8 on transformer graphs, unbuilt

    [targets]                     # search for a variant meeting these (converter.search)
    max_size_mb = 0.02
    max_latency_ms = 0.2          # p95, one sample, on this host
    max_accuracy_drop = 0.01
    formats = ["onnx"]

    [[variants]]                  # leave out to build every kind in the catalogue but opt-in ones
    kind = "onnx-int8-static"     # (or only the [targets] variants when [targets] is set)
    id = "onnx-int8-entropy"      # default: the kind
    calibration = "entropy"       # kind options, see converter.catalogue
    steps = ["prune:channel:bn-scale:0.3", "fuse"]
    gates = { min_agreement = 0.98 }
    tuning = { max_trials = 4 }   # or tuning = false
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from converter.catalogue import VARIANT_KINDS
from converter.compress.steps import CompressionDefaults, Step, parse_compression_section, parse_steps
from converter.errors import RecipeError
from converter.export.base import VariantRequest

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Gates:
    """Limits a variant must meet to ship. ``None`` switches a gate off.

    Gates whose metric the task does not measure are switched off and unset gates get the
    task's defaults (:func:`converter.task.gates_for_task`): top-1 agreement and accuracy for
    classification, cosine and relative error (of each output) for the others.

    For a variant built from a compressed model (it has ``steps``), ``min_agreement``,
    ``min_cosine`` and ``max_abs_err_fp32`` check the export against the compressed PyTorch
    model, ``max_accuracy_drop`` checks accuracy against the source model, and
    ``min_source_agreement`` (off by default) checks top-1 agreement with the source model.
    """

    max_accuracy_drop: float | None = 0.005
    min_agreement: float | None = 0.99
    max_abs_err_fp32: float | None = 1e-4
    min_cosine: float | None = None
    max_rel_err: float | None = None
    max_size_bytes: int | None = None
    max_latency_p95_ms: float | None = None
    min_source_agreement: float | None = None

    def merged(self, overrides: dict[str, Any], where: str) -> Gates:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise RecipeError(f"{where}: unknown gate(s) {sorted(unknown)}; known: {sorted(known)}")
        for name, value in overrides.items():
            if value is not None and not isinstance(value, int | float):
                raise RecipeError(f"{where}: gate {name} must be a number, got {value!r}")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class Validation:
    """How variants are measured."""

    max_samples: int = 1000
    calibration_samples: int = 128
    golden_count: int = 16
    threads: int = 1
    agreement_cosine: float = 0.99
    warmup: int = 3


@dataclass(frozen=True)
class Tuning:
    """Accuracy-aware tuning of int8 variants that miss their gates (converter.tuning).

    Attributes:
        enabled: tune at all (``tuning = false`` on a variant switches it off).
        max_trials: attempts after the first one (other calibrations, float layers).
        max_seconds: wall-clock budget for one variant's tuning, sensitivity included.
        sensitivity_samples: eval samples used to rank layers by sensitivity.
        max_float_layers: most layers kept in float before giving up.
        skip_predicted: skip, unbuilt and with the reason, the variants
            :mod:`converter.tuning.feasibility` predicts not worth building on the graph.
    """

    enabled: bool = True
    max_trials: int = 12
    max_seconds: float = 180.0
    sensitivity_samples: int = 200
    max_float_layers: int = 8
    skip_predicted: bool = True


@dataclass(frozen=True)
class Targets:
    """Targets the gated pipeline searches for instead of fixed knobs (converter.search).

    Attributes:
        max_size_mb: file size limit (MB = 10^6 bytes).
        max_latency_ms: p95 latency limit, one sample at a time on this host.
        max_accuracy_drop: accuracy drop limit (ratio); the recipe's gate when left out.
        formats: formats to search a variant for (``onnx``, ``tflite``).
        importance: channel importance for pruning (``bn-scale``, ``l1``, ``auto``: bn-scale
            when the model has BatchNorm layers).
        max_prune: highest channel-pruning rate tried.
        bisect_steps: bisection steps on the pruning rate.
    """

    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    max_accuracy_drop: float | None = None
    formats: tuple[str, ...] = ("onnx",)
    importance: str = "auto"
    max_prune: float = 0.7
    bisect_steps: int = 4


@dataclass(frozen=True)
class VariantPlan:
    """One variant to build: the request, its gates, the steps before export and tuning."""

    request: VariantRequest
    gates: Gates
    steps: tuple[Step, ...] = ()
    tuning: Tuning = field(default_factory=Tuning)


@dataclass(frozen=True)
class Recipe:
    """The parsed recipe."""

    variants: list[VariantPlan]
    validation: Validation = field(default_factory=Validation)
    compression: CompressionDefaults = field(default_factory=CompressionDefaults)
    tuning: Tuning = field(default_factory=Tuning)
    targets: Targets | None = None
    gates: Gates = field(default_factory=Gates)

    @property
    def formats(self) -> list[str]:
        seen: list[str] = []
        for plan in self.variants:
            if plan.request.kind.format not in seen:
                seen.append(plan.request.kind.format)
        return seen


def default_recipe() -> Recipe:
    """Every kind in the catalogue but the opt-in ones, with default options and gates."""
    return parse_recipe({})


def load_recipe(path: Path | str | None) -> Recipe:
    """Read a recipe TOML file; ``None`` gives :func:`default_recipe`.

    Raises:
        RecipeError: the file is missing, not TOML, or names unknown kinds, options or gates.
    """
    if path is None:
        return default_recipe()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"recipe {str(path)!r} is not valid TOML: {err}") from None
    return parse_recipe(data, where=f"recipe {path.name}")


def parse_recipe(data: dict[str, Any], where: str = "recipe") -> Recipe:
    """Build a :class:`Recipe` from parsed TOML (see the module docstring for the keys)."""
    sections = {"gates", "validation", "variants", "compression", "tuning", "targets"}
    unknown = set(data) - sections
    if unknown:
        raise RecipeError(f"{where}: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    gates = Gates().merged(dict(data.get("gates", {})), f"{where} [gates]")
    validation = _parse_validation(dict(data.get("validation", {})), where)
    compression = parse_compression_section(dict(data.get("compression", {})), where)
    tuning = _parse_tuning(data.get("tuning", {}), Tuning(), f"{where} [tuning]")
    targets = _parse_targets(dict(data["targets"]), where) if "targets" in data else None
    entries = data.get("variants")
    if entries is None:
        entries = [] if targets is not None else [
            {"kind": name} for name, kind in VARIANT_KINDS.items() if not kind.opt_in]
    if not isinstance(entries, list) or (not entries and targets is None):
        raise RecipeError(f"{where}: [[variants]] must be a non-empty list of tables")
    plans = [_parse_variant(entry, gates, compression, tuning, where) for entry in entries]
    ids = [p.request.id for p in plans] + [f"{fmt}-target" for fmt in (targets.formats if targets else ())]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RecipeError(f"{where}: variant ids must be unique, repeated: {duplicates}")
    return Recipe(plans, validation, compression, tuning, targets, gates)


def _parse_validation(values: dict[str, Any], where: str) -> Validation:
    known = {f.name: f for f in dataclasses.fields(Validation)}
    unknown = set(values) - set(known)
    if unknown:
        raise RecipeError(f"{where} [validation]: unknown key(s) {sorted(unknown)}")
    for name, value in values.items():
        if not isinstance(value, int | float) or (value <= 0 and name != "warmup"):
            raise RecipeError(f"{where} [validation]: {name} must be a positive number, got {value!r}")
    return Validation(**values)


def _parse_tuning(value: Any, base: Tuning, where: str) -> Tuning:
    if isinstance(value, bool):
        return dataclasses.replace(base, enabled=value)
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: tuning must be a table or true/false, got {value!r}")
    known = {f.name for f in dataclasses.fields(Tuning)}
    unknown = set(value) - known
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    for name, item in value.items():
        if name in ("enabled", "skip_predicted"):
            if not isinstance(item, bool):
                raise RecipeError(f"{where}: {name} must be true or false")
        elif isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
            raise RecipeError(f"{where}: {name} must be a non-negative number, got {item!r}")
    return dataclasses.replace(base, **value)


def _parse_targets(values: dict[str, Any], where: str) -> Targets:
    where = f"{where} [targets]"
    known = {f.name for f in dataclasses.fields(Targets)}
    unknown = set(values) - known
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    formats = values.pop("formats", ["onnx"])
    if not isinstance(formats, list) or not formats or not set(formats) <= {"onnx", "tflite"}:
        raise RecipeError(f"{where}: formats must be a non-empty list of 'onnx' and 'tflite', "
                          f"got {formats!r}")
    importance = values.pop("importance", "auto")
    if importance not in ("auto", "bn-scale", "l1"):
        raise RecipeError(f"{where}: importance must be auto, bn-scale or l1, got {importance!r}")
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise RecipeError(f"{where}: {name} must be a positive number, got {value!r}")
    if not 0 < values.get("max_prune", 0.7) < 1:
        raise RecipeError(f"{where}: max_prune must be in (0, 1)")
    if "bisect_steps" in values:
        values["bisect_steps"] = int(values["bisect_steps"])
    targets = Targets(formats=tuple(dict.fromkeys(formats)), importance=importance, **values)
    if targets.max_size_mb is None and targets.max_latency_ms is None \
            and targets.max_accuracy_drop is None:
        raise RecipeError(f"{where}: set at least one of max_size_mb, max_latency_ms, "
                          "max_accuracy_drop")
    return targets


def _parse_variant(
    entry: Any, gates: Gates, compression: CompressionDefaults, tuning: Tuning, where: str
) -> VariantPlan:
    if isinstance(entry, str):
        entry = {"kind": entry}
    if not isinstance(entry, dict) or "kind" not in entry:
        raise RecipeError(f"{where}: each variant needs a kind, got {entry!r}")
    entry = dict(entry)
    kind_name = entry.pop("kind")
    kind = VARIANT_KINDS.get(kind_name)
    if kind is None:
        raise RecipeError(
            f"{where}: unknown variant kind {kind_name!r}; known: {', '.join(VARIANT_KINDS)}"
        )
    variant_id = str(entry.pop("id", kind_name))
    if not _ID.match(variant_id):
        raise RecipeError(f"{where}: variant id {variant_id!r} must match [a-z0-9][a-z0-9._-]*")
    variant_gates = gates.merged(dict(entry.pop("gates", {})), f"{where} variant {variant_id}")
    steps = compression.steps
    if "steps" in entry:
        steps = parse_steps(entry.pop("steps"), f"{where} variant {variant_id}", compression.student)
    variant_tuning = _parse_tuning(entry.pop("tuning", {}), tuning, f"{where} variant {variant_id}")
    unknown = set(entry) - set(kind.options)
    if unknown:
        raise RecipeError(
            f"{where}: variant {variant_id} ({kind_name}) has unknown option(s) {sorted(unknown)};"
            f" known: {sorted(kind.options)}"
        )
    options = {**kind.options, **entry}
    return VariantPlan(VariantRequest(variant_id, kind, options), variant_gates, steps, variant_tuning)
