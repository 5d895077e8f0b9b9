"""The architecture search in the report: its log as a Markdown table and a Pareto plot
(p50 latency against quality) per searched chain, written next to ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.report_plots import _pyplot
from converter.results import VariantResult

#: file name of the plot of the ``n``-th search in the release.
PLOT_NAME = "search-{n}.png"


def is_search(step: dict[str, Any]) -> bool:
    return str(step.get("step", "")).startswith("search:") and "candidates" in step


def search_lines(step: dict[str, Any]) -> list[str]:
    """The search's space, budget, outcome and every candidate, for ``report.md``."""
    stages = "; ".join(f"{s['name']}: {len(s['layers'])} layers ({'/'.join(map(str, s['channels']))} "
                       f"channels)" + (f", droppable blocks {', '.join(s['blocks'])}" if s["blocks"] else "")
                       for s in step["space"]["stages"])
    lines = [
        f"Stages: {stages}; {step['space']['size']:,} architectures (widths "
        f"{', '.join(f'{w:g}' for w in step['space']['widths'])} and 1 per stage; the classifier "
        f"head {', '.join(step['space']['ignored'])} keeps its outputs).", "",
        f"Latency budget p50 ≤ {step['budget_ms']:.3f} ms ({step['budget']}) on {step['runtime']}, "
        f"one sample at a time; candidates within it fine-tuned and ranked by {step['metric']} on "
        f"{step['held_out_rows']} held-out training rows. {len(step['candidates'])} candidates in "
        f"{step['elapsed_seconds']:.0f} s of {step['time_budget_seconds']:g} s; stopped: "
        f"{step['stopped']}.",
    ]
    if step.get("chosen"):
        final = step.get("final_fine_tune") or []
        lines += ["", f"Chosen: {step['chosen']} (MACs ×{step['macs_ratio']:.3f}, p50 "
                     f"×{step['latency_ratio']:.3f} of the source)"
                     + (f"; then fine-tuned {len(final)} more epochs: {step['metric']} "
                        f"{step['final_quality']:.4f}." if final else ".")]
    if step.get("plot"):
        lines += ["", f"![architecture search]({step['plot']})"]
    lines += ["", "| # | widths | blocks kept | params | MACs | size KB | p50 ms | within budget "
              "| quality | fine-tune epochs | s | Pareto front | chosen |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, c in enumerate(step["candidates"]):
        quality = "not trained" if c["quality"] is None else f"{c['quality']:.4f}"
        within, front, chosen = (("yes" if c[k] else "") for k in ("within_budget", "on_front", "chosen"))
        lines.append(
            f"| {n}{' (source)' if n == 0 else ''} | {'/'.join(f'{w:g}' for w in c['widths'])} | "
            f"{'/'.join(map(str, c['depths']))} | {c['params']:,} | {c['macs']:,} | "
            f"{c['size_bytes'] / 1024:.1f} | {c['latency_ms']:.4f} | {within or 'no'} | "
            f"{quality} | {c['fine_tune_epochs']} | {c['seconds']:.1f} | {front} | {chosen} |")
    return lines


def write_search_plots(directory: Path, results: list[VariantResult]) -> list[str]:
    """One plot per distinct search log; its file name goes into the step's ``plot`` key (so
    ``report.json`` and ``report.md`` name it). Returns the files written (none without
    matplotlib)."""
    written: list[str] = []
    done: dict[int, str] = {}
    for result in results:
        for step in result.steps or []:
            if not is_search(step):
                continue
            key = id(step["candidates"])
            if key not in done:
                name = PLOT_NAME.format(n=len(done) + 1)
                done[key] = name
                if _plot(Path(directory) / name, step):
                    written.append(name)
            if done[key] in written:
                step["plot"] = done[key]
    return written


def _plot(path: Path, step: dict[str, Any]) -> bool:
    plt = _pyplot()
    if plt is None or not step["candidates"]:
        return False
    candidates = step["candidates"]
    trained = [c for c in candidates if c["quality"] is not None]
    untrained = [c for c in candidates if c["quality"] is None]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([c["latency_ms"] for c in trained], [c["quality"] for c in trained], s=24,
               color="tab:blue", alpha=0.5, label="candidate (fine-tuned)")
    front = sorted((c for c in trained if c["on_front"]), key=lambda c: c["latency_ms"])
    ax.plot([c["latency_ms"] for c in front], [c["quality"] for c in front], "o--", color="black",
            markersize=6, linewidth=0.8, label="Pareto front")
    low = min([c["quality"] for c in trained], default=0.0)
    if untrained:
        ax.scatter([c["latency_ms"] for c in untrained], [low] * len(untrained), marker="x",
                   color="tab:gray", label="over the budget (not trained)")
    source = candidates[0]
    if source["quality"] is not None:
        ax.scatter([source["latency_ms"]], [source["quality"]], marker="D", s=60, color="tab:green",
                   label="source model", zorder=3)
    for c in candidates:
        if c["chosen"]:
            ax.scatter([c["latency_ms"]], [c["quality"]], marker="*", s=220, color="tab:orange",
                       edgecolors="black", label=f"chosen: {c['arch']}", zorder=4)
            if step.get("final_quality") is not None:
                ax.scatter([c["latency_ms"]], [step["final_quality"]], marker="*", s=220,
                           facecolors="none", edgecolors="tab:orange", zorder=4,
                           label=f"chosen after {len(step['final_fine_tune'])} more epochs")
    ax.axvline(step["budget_ms"], color="red", linestyle=":", label=f"budget {step['budget_ms']:.3f} ms")
    ax.set_xlabel(f"latency p50 (ms, one sample, {step['runtime']})")
    epochs = max((c["fine_tune_epochs"] for c in trained), default=0)
    ax.set_ylabel(f"{step['metric']} (after {epochs} fine-tune epochs)")
    ax.set_title(f"{step['step']}: {len(candidates)} candidates, stopped: {step['stopped']}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
