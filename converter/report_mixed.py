"""Mixed-precision variants in the report: the precision chosen per layer, every assignment
measured with the Pareto front it was chosen from, and a plot of that front per variant
(``mixed-<variant id>.png``) next to ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.report_plots import _pyplot
from converter.results import VariantResult

#: file name of a mixed variant's plot in the release.
PLOT_NAME = "mixed-{id}.png"
_COLORS = {"fp32": "tab:gray", "fp16": "tab:blue", "int8": "tab:orange"}


def _mixed(result: VariantResult) -> dict[str, Any] | None:
    return result.built.details.get("mixed") if result.built else None


def mixed_sections(results: list[VariantResult]) -> list[str]:
    """Per mixed-precision variant: the budget, the candidates (front marked) and the layers."""
    mixed = [(r, _mixed(r)) for r in results if _mixed(r)]
    if not mixed:
        return []
    lines = ["## Mixed precision per layer", "",
             "Each layer's output error with its weights alone in fp16 and alone in int8 was "
             "measured on the runtime; assignments from all-fp32 to all-int8 (cheapest error per "
             "byte saved first) were built and measured; the most faithful one on the Pareto "
             "front within the budget was kept. Error: relative squared error of the outputs "
             "against the float model on calibration samples.", ""]
    for r, m in mixed:
        budget = ", ".join(f"{k} <= {v:g}" for k, v in m["budget"].items())
        lines += [f"### {r.id}: budget {budget}", ""]
        if m.get("plot"):
            lines += [f"![{r.id} Pareto front]({m['plot']})", ""]
        lines += ["| # | fp32 / fp16 / int8 layers | size ×fp32 | p50 ×fp32 | error | front | chosen |",
                  "|---|---|---|---|---|---|---|"]
        for n, c in enumerate(m["candidates"]):
            layers = c["layers"]
            p50 = "–" if c["p50_ratio"] is None else f"{c['p50_ratio']:.3f}"
            lines.append(f"| {n} | {layers['fp32']} / {layers['fp16']} / {layers['int8']} | "
                         f"{c['size_ratio']:.3f} | {p50} | {c['error']:.3g} | "
                         f"{'yes' if c['front'] else ''} | {'yes' if c['chosen'] else ''} |")
        lines += ["", "| layer | op | module | weights | error fp16 | error int8 | precision |",
                  "|---|---|---|---|---|---|---|"]
        for row in m["layers"]:
            name = row["layer"] if len(row["layer"]) <= 40 else "…" + row["layer"][-39:]
            lines.append(f"| {name} | {row['op']} | {row['module'] or '–'} | {row['weights']:,} | "
                         f"{row['error_fp16']:.3g} | {row['error_int8']:.3g} | "
                         f"**{row['precision']}** |")
        lines.append("")
    return lines


def write_mixed_plots(directory: Path, results: list[VariantResult]) -> list[str]:
    """One plot per mixed-precision variant; its file name goes into ``details["mixed"]["plot"]``
    (so ``report.json`` and ``report.md`` name it). Returns the files written (none without
    matplotlib)."""
    written = []
    for r in results:
        m = _mixed(r)
        if m and _plot(Path(directory) / PLOT_NAME.format(id=r.id), r.id, m):
            m["plot"] = PLOT_NAME.format(id=r.id)
            written.append(m["plot"])
    return written


def _plot(path: Path, variant_id: str, mixed: dict[str, Any]) -> bool:
    """Error against size (left) and p50 (right), both as ratios to fp32; each panel's front
    (no other point smaller or faster and as faithful) joined and edged black, the chosen
    assignment a star, the budget a red line."""
    plt = _pyplot()
    candidates = mixed["candidates"]
    if plt is None or not candidates:
        return False
    floor = min((c["error"] for c in candidates if c["error"] > 0), default=1e-12) / 2
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key, label in ((axes[0], "size_ratio", "file size ×fp32"),
                           (axes[1], "p50_ratio", "latency p50 ×fp32 (one sample)")):
        points = [(c[key], max(c["error"], floor), c) for c in candidates if c[key] is not None]
        front = [(x, y) for x, y, _ in points
                 if not any(x2 <= x and y2 <= y and (x2 < x or y2 < y) for x2, y2, _ in points)]
        for x, y, c in points:
            share = c["layers"]
            color = max(share, key=lambda p: share[p])  # the precision most layers took
            ax.scatter(x, y, s=180 if c["chosen"] else 50, marker="*" if c["chosen"] else "o",
                       color=_COLORS[color], edgecolors="black" if (x, y) in front else "none",
                       zorder=3)
            ax.annotate(f"{share['fp32']}/{share['fp16']}/{share['int8']}", (x, y), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        front.sort()
        if len(front) > 1:
            ax.plot([x for x, _ in front], [y for _, y in front], color="black", linewidth=0.8,
                    linestyle="--", zorder=2, label="Pareto front")
        if key in mixed["budget"]:
            ax.axvline(mixed["budget"][key], color="tab:red", linewidth=1, label="budget")
        ax.set_xlabel(label)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("output error vs float (log)")
    fig.suptitle(f"{variant_id}: assignments measured (labels: fp32/fp16/int8 layers; color: "
                 "most layers' precision; star: chosen)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
