"""A small YAML writer for the generated Prometheus and Grafana files (no PyYAML needed).

Usage::

    to_yaml({"groups": [{"name": "edgeship", "rules": [...]}]})

Block style, keys in insertion order, multi-line strings as ``|-`` literal blocks (PromQL
stays readable), other strings plain when that is unambiguous and JSON-quoted otherwise
(a JSON string is a valid YAML double-quoted scalar). Only what the generated files need:
mappings, lists, strings, numbers, booleans and None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_ ./-]*$|^\d+(ms|[smhdwy])$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"})


def to_yaml(value: Mapping[str, Any]) -> str:
    """The YAML text of a mapping, ending with a newline."""
    return "\n".join(_lines(value, 0)) + "\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and not value.endswith(" ") and value.lower() not in _RESERVED:
            return value
        return json.dumps(value, ensure_ascii=False)
    raise ValueError(f"cannot write {type(value).__name__} as YAML: {value!r}")


def _key(key: Any) -> str:
    key = str(key)
    return key if _KEY.match(key) and key.lower() not in _RESERVED else json.dumps(key)


def _is_block(value: Any) -> bool:
    return isinstance(value, (Mapping, list)) and bool(value)


def _lines(value: Any, indent: int) -> Iterator[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _is_block(item):
                yield f"{pad}{_key(key)}:"
                yield from _lines(item, indent + 2)
            elif isinstance(item, str) and "\n" in item:
                yield f"{pad}{_key(key)}: |-"
                yield from (f"{pad}  {line}".rstrip() for line in item.split("\n"))
            else:
                yield f"{pad}{_key(key)}: {_inline(item)}"
    elif isinstance(value, list):
        for item in value:
            if _is_block(item):
                first, *rest = _lines(item, indent + 2)
                yield f"{pad}- {first[indent + 2:]}"
                yield from rest
            elif isinstance(item, str) and "\n" in item:
                raise ValueError("multi-line strings in lists are not supported")
            else:
                yield f"{pad}- {_inline(item)}"
    else:
        yield pad + _scalar(value)


def _inline(value: Any) -> str:
    """A scalar, or an empty mapping or list."""
    if isinstance(value, Mapping):
        return "{}"
    return "[]" if isinstance(value, list) else _scalar(value)
