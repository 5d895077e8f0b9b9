"""The report's figures: the variant overview (``report.png``) and the Pareto plot
(``pareto.png``). matplotlib is optional: without it the report has no figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.results import VariantResult

FORMAT_COLORS = {"onnx": "tab:blue", "tflite": "tab:orange", "coreml": "tab:green"}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


#: the quality the plots show, first measured wins: what the task is judged on
#: (converter.task), higher is better; a regression shows 1 − relative error.
QUALITY = (("accuracy", "accuracy"), ("agreement", "agreement"), ("cosine", "cosine"),
           ("1 − relative error", "rel_err"))


def quality_metric(metrics: list[dict[str, Any]]) -> str | None:
    """The label of the first :data:`QUALITY` metric that every one of ``metrics`` has."""
    for label, key in QUALITY:
        if metrics and all(m.get(key) is not None for m in metrics):
            return label
    return None


def quality(metrics: dict[str, Any], label: str | None) -> float | None:
    """The value of quality ``label`` in ``metrics`` (``None`` when not measured)."""
    key = dict(QUALITY).get(label or "")
    value = metrics.get(key) if key else None
    return 1.0 - value if key == "rel_err" and value is not None else value


def write_plot(path: Path, results: list[VariantResult], reference_accuracy: float | None) -> bool:
    """Two panels: size against p50 latency (left) and the task's quality per variant (right:
    accuracy, else top-1 agreement, else cosine, else 1 − relative error). Red marks a variant
    that failed a gate. Returns False when matplotlib is missing or nothing was measured."""
    with_metrics = [r for r in results if r.metrics and r.size_bytes]
    metric = quality_metric([r.metrics for r in with_metrics])
    measured = [r for r in with_metrics if quality(r.metrics, metric) is not None]
    if not measured:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    colors = FORMAT_COLORS
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.35 * len(measured) + 3.5))
    for r in measured:
        p50 = (r.metrics.get("latency_ms") or {}).get("p50") or 0.0
        left.scatter(r.size_bytes / 1024, p50, s=60, color=colors.get(r.format, "tab:gray"),
                     edgecolors="red" if not r.shipped else "black", linewidths=1.5)
        left.annotate(r.id, (r.size_bytes / 1024, p50), fontsize=7, xytext=(4, 3),
                      textcoords="offset points")
    left.set_xscale("log")
    left.set_xlabel("file size (KiB, log scale)")
    left.set_ylabel("latency p50 (ms, one sample)")
    left.set_title("size vs latency")
    ordered = sorted(measured, key=lambda r: quality(r.metrics, metric) or 0.0)
    values = [quality(r.metrics, metric) or 0.0 for r in ordered]
    right.barh([r.id for r in ordered], values,
               color=[colors.get(r.format, "tab:gray") for r in ordered],
               edgecolor=["black" if r.shipped else "red" for r in ordered], linewidth=1.5)
    if metric == "accuracy" and reference_accuracy is not None:
        right.axvline(reference_accuracy, color="gray", linestyle="--", linewidth=1,
                      label=f"PyTorch reference {reference_accuracy:.4f}")
        right.legend(loc="lower right", fontsize=8)
    low = min(values + ([reference_accuracy] if reference_accuracy is not None else []))
    right.set_xlim(max(0.0, low - max(0.02, (1 - low) * 0.5)), 1.0)
    right.set_xlabel(metric)
    right.set_title(f"{metric} per variant (red edge: gate failed)")
    right.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def pareto_front(points: list[tuple[float, float, float]]) -> set[int]:
    """Indices of the non-dominated ``(size, latency, accuracy)`` points: no other point is as
    small, as fast and as accurate, and strictly better in one of them."""
    front = set()
    for i, (s, t, a) in enumerate(points):
        dominated = any(
            s2 <= s and t2 <= t and a2 >= a and (s2 < s or t2 < t or a2 > a)
            for j, (s2, t2, a2) in enumerate(points) if j != i
        )
        if not dominated:
            front.add(i)
    return front


def front_2d(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The best quality reachable at each cost: points sorted by cost where quality improves."""
    front: list[tuple[float, float]] = []
    for x, q in sorted(points):
        if not front or q > front[-1][1]:
            front.append((x, q))
    return front


def candidate_points(
    results: list[VariantResult], search: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Every measured candidate: variants (``kind`` variant), tuning attempts and search steps
    that were not kept (``kind`` candidate), with the quality :func:`quality_metric` picks."""
    points = []
    metric = quality_metric([r.metrics for r in results if r.metrics])
    for r in results:
        m, p50 = r.metrics, (r.metrics.get("latency_ms") or {}).get("p50")
        value = quality(m, metric)
        if r.size_bytes and p50 and value is not None:
            points.append({"label": r.id, "size": r.size_bytes, "latency": p50, "quality": value,
                           "format": r.format, "kind": "variant", "shipped": r.shipped})
        for attempt in (r.tuning or {}).get("attempts", []):
            am = attempt["metrics"]
            value = quality(am, metric)
            if not attempt["kept"] and am.get("size_bytes") and am.get("latency_p50_ms") \
                    and value is not None:
                points.append({"label": f"{r.id} #{attempt['attempt']}", "size": am["size_bytes"],
                               "latency": am["latency_p50_ms"], "quality": value,
                               "format": r.format, "kind": "candidate", "shipped": False})
    for entry in search or []:
        for n, step in enumerate(entry["steps"]):
            sm = step["metrics"]
            if sm.get("size_bytes") and sm.get("latency_p50_ms") and sm.get("accuracy") is not None:
                points.append({"label": f"{entry['variant']} step {n}", "size": sm["size_bytes"],
                               "latency": sm["latency_p50_ms"], "quality": sm["accuracy"],
                               "format": entry["format"], "kind": "candidate", "shipped": False})
    return points


def write_pareto(
    path: Path, results: list[VariantResult], search: list[dict[str, Any]] | None = None
) -> bool:
    """Accuracy against size (left) and against p50 latency (right) for every measured
    candidate; the Pareto front over (size, latency, accuracy) is marked and joined, shipped
    variants are stars. Returns False when matplotlib is missing or nothing was measured."""
    points = candidate_points(results, search)
    plt = _pyplot()
    if plt is None or not points:
        return False
    front = pareto_front([(p["size"], p["latency"], p["quality"]) for p in points])
    metric = quality_metric([r.metrics for r in results if r.metrics]) or "quality"
    variants = [p["quality"] for p in points if p["kind"] == "variant"]
    floor = max(0.0, min(variants) - max(0.02, (1 - min(variants)) * 0.5)) if variants else 0.0
    below = sum(p["quality"] < floor for p in points)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, key, label in ((axes[0], "size", "file size (KiB, log scale)"),
                           (axes[1], "latency", "latency p50 (ms, one sample)")):
        def x_of(p: dict[str, Any], key: str = key) -> float:
            return p["size"] / 1024 if key == "size" else p["latency"]

        for i, p in enumerate(points):
            color = FORMAT_COLORS.get(p["format"], "tab:gray")
            if p["kind"] == "candidate":
                ax.scatter(x_of(p), p["quality"], s=14, color=color, alpha=0.35, linewidths=0)
                continue
            ax.scatter(x_of(p), p["quality"], s=160 if p["shipped"] else 50, color=color,
                       marker="*" if p["shipped"] else "o",
                       edgecolors="black" if i in front else "none", linewidths=1.2, zorder=3)
            ax.annotate(p["label"], (x_of(p), p["quality"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        steps = front_2d([(x_of(p), p["quality"]) for p in points])
        ax.step([x for x, _ in steps], [q for _, q in steps], where="post", color="black",
                linewidth=0.8, linestyle="--", zorder=2, label=f"best {metric} for the {key}")
        ax.set_xlabel(label)
        ax.set_ylim(floor, 1.0 + (1.0 - floor) * 0.03)
        ax.legend(loc="lower right", fontsize=8)
        if key == "size":
            ax.set_xscale("log")
    axes[0].set_ylabel(metric)
    fig.suptitle(f"stars: shipped; black edge: Pareto-optimal in size, latency and {metric} together; "
                 "faint dots: candidates tried and not kept"
                 + (f" ({below} below the axis)" if below else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
