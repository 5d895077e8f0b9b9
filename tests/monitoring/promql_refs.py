"""What a PromQL expression refers to: metric selectors, label matchers, grouping labels.

A lexical scan, enough for the expressions edgeship generates (no PromQL parser in Python):
string literals are blanked first so a regex value such as ``"a|b"`` is never read as a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeship.contract.metrics import METRICS, MetricSpec

HISTOGRAM_SUFFIXES = {"_bucket": ("le",), "_sum": (), "_count": ()}
#: the series of a catalogue summary (quantile-less: no ``quantile`` label).
SUMMARY_SUFFIXES = {"_sum": (), "_count": ()}
_SUFFIXES = {"histogram": HISTOGRAM_SUFFIXES, "summary": SUMMARY_SUFFIXES}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\b(edgeship_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_REPLACE = re.compile(r'label_replace\(.*?,\s*"(\w+)"', re.S)
_LABEL_VALUES = re.compile(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)")


@dataclass(frozen=True)
class Selector:
    """One metric selector: the name as written and its label matchers (label → value)."""

    name: str
    matchers: tuple[tuple[str, str], ...]


def selectors(expr: str) -> list[Selector]:
    """Every ``edgeship_*`` selector in ``expr`` with its matchers."""
    out = []
    for match in _SELECTOR.finditer(expr):
        body = match.group(2) or ""
        out.append(Selector(match.group(1), tuple((m.group(1), m.group(3)) for m in _MATCHER.finditer(body))))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses."""
    blank = _STRING.sub('""', expr)
    return {label.strip() for group in _GROUPING.findall(blank)
            for label in group.split(",") if label.strip()}


def created_labels(expr: str) -> set[str]:
    """Labels an expression adds with ``label_replace``."""
    return set(_LABEL_REPLACE.findall(expr))


def label_values_refs(definition: str) -> list[tuple[str, str]]:
    """``(metric, label)`` of Grafana ``label_values(metric, label)`` variable queries."""
    return _LABEL_VALUES.findall(definition)


def resolve(name: str, catalogue: dict[str, MetricSpec] = METRICS
            ) -> tuple[MetricSpec, tuple[str, ...]] | None:
    """The catalogue entry behind a series name and the extra labels the suffix brings (``le``),
    or None when the name is not in the catalogue. A histogram or summary is referred to by its
    series (``_bucket``, ``_sum``, ``_count``), never by its bare name."""
    if name in catalogue:
        return (catalogue[name], ()) if catalogue[name].kind not in _SUFFIXES else None
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in catalogue and suffix in _SUFFIXES.get(catalogue[base].kind, {}):
            return catalogue[base], _SUFFIXES[catalogue[base].kind][suffix]
    return None
