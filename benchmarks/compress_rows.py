"""The rows of :mod:`benchmarks.compress_bench`'s table, shared by its section modules (which the
benchmark imports, so they cannot import it back)."""

from __future__ import annotations

from typing import Any


def row(bench: str, metric: str, value: Any, target: str, met: bool | None, detail: str) -> dict[str, Any]:
    """One table row: ``met`` is True (PASS), False (MISS) or None (information only)."""
    return {"benchmark": bench, "metric": metric, "value": value, "target": target, "met": met,
            "detail": detail}


def pts(drop: float | None) -> float | None:
    """An accuracy drop (a fraction) in points, two decimals."""
    return None if drop is None else round(drop * 100, 2)


def p50_ratio(metrics: dict[str, Any], base: dict[str, Any]) -> float | None:
    """p50 latency of ``metrics`` over ``base``'s, measured in the same run."""
    a, b = (metrics.get("latency_ms") or {}).get("p50"), (base.get("latency_ms") or {}).get("p50")
    return round(a / b, 3) if a and b else None


def size_ratio(a: Any, b: Any) -> str:
    """``a``'s file size over ``b``'s, as the table prints it."""
    return f"{a.size_bytes / b.size_bytes:.2f}" if a.size_bytes and b.size_bytes else "–"
