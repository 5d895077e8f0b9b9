"""Recipes: which variants to build, with which options, and the gates each must pass.

A recipe is TOML. Every key is optional; what is left out takes the default::

    [gates]                       # for every variant unless the variant overrides it
    max_accuracy_drop = 0.005     # ratio: 0.005 = half a point of accuracy
    min_agreement = 0.99          # top-1 agreement with the PyTorch reference
    max_abs_err_fp32 = 1e-4       # fp32 variants only

    [validation]
    max_samples = 1000            # evaluation samples used per variant
    calibration_samples = 128
    golden_count = 16
    threads = 1                   # runtime threads while measuring latency
    agreement_cosine = 0.99       # non-classification: a sample agrees when cosine >= this

    [[variants]]                  # leave out to build every kind in the catalogue
    kind = "onnx-int8-static"
    id = "onnx-int8-entropy"      # default: the kind
    calibration = "entropy"       # kind options, see converter.catalogue
    gates = { min_agreement = 0.98 }
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from converter.catalogue import VARIANT_KINDS
from converter.errors import RecipeError
from converter.export.base import VariantRequest

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Gates:
    """Limits a variant must meet to ship. ``None`` switches a gate off."""

    max_accuracy_drop: float | None = 0.005
    min_agreement: float | None = 0.99
    max_abs_err_fp32: float | None = 1e-4
    min_cosine: float | None = None
    max_size_bytes: int | None = None
    max_latency_p95_ms: float | None = None

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
class VariantPlan:
    """One variant to build with its gates."""

    request: VariantRequest
    gates: Gates


@dataclass(frozen=True)
class Recipe:
    """The parsed recipe."""

    variants: list[VariantPlan]
    validation: Validation = field(default_factory=Validation)

    @property
    def formats(self) -> list[str]:
        seen: list[str] = []
        for plan in self.variants:
            if plan.request.kind.format not in seen:
                seen.append(plan.request.kind.format)
        return seen


def default_recipe() -> Recipe:
    """Every kind in the catalogue with its default options and the default gates."""
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
    unknown = set(data) - {"gates", "validation", "variants"}
    if unknown:
        raise RecipeError(f"{where}: unknown section(s) {sorted(unknown)}")
    gates = Gates().merged(dict(data.get("gates", {})), f"{where} [gates]")
    validation = _parse_validation(dict(data.get("validation", {})), where)
    entries = data.get("variants")
    if entries is None:
        entries = [{"kind": kind} for kind in VARIANT_KINDS]
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{where}: [[variants]] must be a non-empty list of tables")
    plans = [_parse_variant(entry, gates, where) for entry in entries]
    ids = [p.request.id for p in plans]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RecipeError(f"{where}: variant ids must be unique, repeated: {duplicates}")
    return Recipe(plans, validation)


def _parse_validation(values: dict[str, Any], where: str) -> Validation:
    known = {f.name: f for f in dataclasses.fields(Validation)}
    unknown = set(values) - set(known)
    if unknown:
        raise RecipeError(f"{where} [validation]: unknown key(s) {sorted(unknown)}")
    for name, value in values.items():
        if not isinstance(value, int | float) or (value <= 0 and name != "warmup"):
            raise RecipeError(f"{where} [validation]: {name} must be a positive number, got {value!r}")
    return Validation(**values)


def _parse_variant(entry: Any, gates: Gates, where: str) -> VariantPlan:
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
    unknown = set(entry) - set(kind.options)
    if unknown:
        raise RecipeError(
            f"{where}: variant {variant_id} ({kind_name}) has unknown option(s) {sorted(unknown)};"
            f" known: {sorted(kind.options)}"
        )
    options = {**kind.options, **entry}
    return VariantPlan(VariantRequest(variant_id, kind, options), variant_gates)
