"""Who may be a canary: device attributes, a rollout's target conditions and their matching.

A device reports ``attributes`` (``app_version``, ``os_version``, ``region``, custom tags: string
keys and values, :func:`check_attributes`); a rollout's ``target`` is a list of conditions, all of
which must hold (:func:`parse_target`). A device the target does not match stays outside the
rollout: it runs the stable release with no ``rollout_id``, so nothing it reports counts in
either arm (docs/rollout-server.md, "Targeting").

Pure (no Flask, no database), so the assignment hot path, report checks, the controller and the
CLI share one definition. Attributes are the device's *claims*: they only choose among devices
the operator's target admits; the arm itself stays the server's bucketing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_ATTRIBUTES = 32
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 128
MAX_CONDITIONS = 16
MAX_LIST_VALUES = 64
#: attribute names: lowercase letters, digits, ``_``, ``.`` and ``-``, starting with a letter
ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}\Z")
#: a dotted numeric version (``4``, ``4.2``, ``4.10.1``): at most 8 parts of at most 9 digits
VERSION = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,7}\Z")
#: known to the server, never a claim: a target may name it, a device may not report it
SERVER_ATTRIBUTES = frozenset({"device_class"})
ORDERED_OPS = (">=", ">", "<=", "<")
OPS = ("==", "!=", "in", "not_in", *ORDERED_OPS)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TargetError(ValueError):
    """A malformed target or attributes object; the message names the bad part."""


def check_attributes(value: Any) -> dict[str, str]:
    """``value`` as device attributes: an object of at most :data:`MAX_ATTRIBUTES` entries, each
    key an :data:`ATTRIBUTE_NAME` other than a server attribute, each value a string of at most
    :data:`MAX_VALUE_LENGTH` characters without control characters.

    Raises:
        TargetError: what is wrong, naming the key.
    """
    if not isinstance(value, dict):
        raise TargetError("must be an object of string keys and string values")
    if len(value) > MAX_ATTRIBUTES:
        raise TargetError(f"{len(value)} entries, at most {MAX_ATTRIBUTES}")
    for key, item in value.items():
        _check_name(key, "key")
        if key in SERVER_ATTRIBUTES:
            raise TargetError(f"attribute {key!r} is the server's record of the device, not a claim")
        if not isinstance(item, str) or len(item) > MAX_VALUE_LENGTH or _CONTROL.search(item):
            raise TargetError(f"attribute {key!r} must be a string of at most {MAX_VALUE_LENGTH} "
                              "characters without control characters")
    return dict(value)


@dataclass(frozen=True, slots=True)
class Condition:
    """``attribute op value``; ``value`` is a tuple of strings for ``in`` and ``not_in``."""

    attribute: str
    op: str
    value: str | tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"attribute": self.attribute, "op": self.op, "value": value}

    def matches(self, value: str | None) -> bool:
        """Whether a device whose attribute is ``value`` (None: not reported) meets this; a device
        that does not report the attribute meets no condition on it."""
        if value is None:
            return False
        if self.op in ("in", "not_in"):
            return (value in self.value) == (self.op == "in")
        order = _compare(value, self.value)  # type: ignore[arg-type]
        if self.op in ORDERED_OPS:
            return order is not None and _ORDERED[self.op](order)
        equal = order == 0 if order is not None else value == self.value
        return equal == (self.op == "==")


_ORDERED = {">=": lambda o: o >= 0, ">": lambda o: o > 0, "<=": lambda o: o <= 0, "<": lambda o: o < 0}


def parse_target(value: Any) -> tuple[Condition, ...]:
    """A rollout's ``target`` (None or a list of condition objects) as conditions.

    Raises:
        TargetError: the first bad condition, by index and reason.
    """
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_CONDITIONS:
        raise TargetError(f"must be a list of at most {MAX_CONDITIONS} conditions")
    conditions = []
    for index, item in enumerate(value):
        try:
            conditions.append(_condition(item))
        except TargetError as err:
            raise TargetError(f"target[{index}]: {err}") from None
    return tuple(conditions)


def _condition(item: Any) -> Condition:
    if not isinstance(item, dict) or set(item) != {"attribute", "op", "value"}:
        raise TargetError('a condition is {"attribute", "op", "value"} and nothing else')
    attribute, op, value = item["attribute"], item["op"], item["value"]
    _check_name(attribute, "'attribute'")
    if op not in OPS:
        raise TargetError(f"'op' must be one of {', '.join(OPS)}, not {op!r}")
    if op in ("in", "not_in"):
        if (not isinstance(value, list) or not 0 < len(value) <= MAX_LIST_VALUES
                or not all(_is_value(v) for v in value)):
            raise TargetError(f"'{op}' needs a list of 1 to {MAX_LIST_VALUES} strings of at most "
                              f"{MAX_VALUE_LENGTH} characters")
        return Condition(attribute, op, tuple(value))
    if not _is_value(value):
        raise TargetError(f"'value' must be a string of at most {MAX_VALUE_LENGTH} characters")
    if op in ORDERED_OPS and not VERSION.match(value):
        raise TargetError(f"'{op}' compares dotted numeric versions (like 4.2 or 4.10.1), not {value!r}; "
                          "other strings take ==, !=, in or not_in")
    return Condition(attribute, op, value)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
        raise TargetError(f"{what} {name!r} must be 1 to {MAX_KEY_LENGTH} characters: a lowercase letter, "
                          "then lowercase letters, digits, '_', '.' or '-'")


def _is_value(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_VALUE_LENGTH and not _CONTROL.search(value)


@lru_cache(maxsize=4096)
def version_key(text: str) -> tuple[int, ...] | None:
    """``text`` as a comparable version (trailing zero parts dropped: ``4.2`` == ``4.2.0``), or
    None when it is not a dotted numeric version."""
    if not VERSION.match(text):
        return None
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _compare(left: str, right: str) -> int | None:
    """-1, 0 or 1 comparing two versions; None when either is not a version."""
    a, b = version_key(left), version_key(right)
    if a is None or b is None:
        return None
    return (a > b) - (a < b)


def matches(target: Sequence[Condition], device_class: str, attributes: Mapping[str, str] | None) -> bool:
    """Whether a device of ``device_class`` reporting ``attributes`` meets every condition (an
    empty target admits every device)."""
    if not target:
        return True
    attributes = attributes or {}
    return all(c.matches(device_class if c.attribute in SERVER_ATTRIBUTES else attributes.get(c.attribute))
               for c in target)


#: ``app_version>=4.2``, ``region in eu,us``, ``tier not_in free`` (the CLI's ``--target``)
_EXPRESSION = re.compile(r"^\s*([a-z][a-z0-9_.-]*)\s*(?:(>=|<=|==|!=|>|<)|\s(in|not_in)\s)\s*(.*?)\s*\Z")


def parse_expression(text: str) -> dict[str, Any]:
    """A condition written as ``ATTRIBUTE OP VALUE`` (``in``/``not_in`` take comma-separated
    values) as its JSON object; checked by :func:`parse_target` like any other.

    Raises:
        TargetError: ``text`` is not of that form, or the condition is malformed.
    """
    found = _EXPRESSION.match(text)
    if found is None:
        raise TargetError(f"{text!r} is not ATTRIBUTE OP VALUE (OP one of {', '.join(OPS)}), "
                          "e.g. 'app_version>=4.2' or 'region in eu,us'")
    attribute, symbol, word, value = found.groups()
    op = symbol or word
    item: dict[str, Any] = {"attribute": attribute, "op": op,
                            "value": [v.strip() for v in value.split(",")] if word else value}
    parse_target([item])
    return item


def expression(item: Mapping[str, Any]) -> str:
    """A condition's JSON object written as :func:`parse_expression` reads it."""
    value = item["value"]
    return f"{item['attribute']} {item['op']} {','.join(value) if isinstance(value, list) else value}"
