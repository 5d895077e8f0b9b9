"""The conversion report: a variant table (terminal and Markdown), JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converter.manifest import Manifest
from converter.results import VariantResult

REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"

COLUMNS = ("variant", "status", "size KB", "size ×fp32", "accuracy", "drop pts", "agree",
           "max abs err", "cosine", "p50 ms", "p95 ms", "p50 ×fp32", "peak RSS MB")


def baseline_for(result: VariantResult, results: list[VariantResult]) -> VariantResult | None:
    """The fp32 variant to compare with: same format if measured, else any measured fp32."""
    fp32 = [r for r in results if r.precision == "fp32" and r.size_bytes]
    same = [r for r in fp32 if r.format == result.format]
    return (same or fp32 or [None])[0]


def table_rows(results: list[VariantResult]) -> list[list[str]]:
    rows = []
    for r in results:
        m, base = r.metrics, baseline_for(r, results)
        lat = m.get("latency_ms") or {}
        base_p50 = ((base.metrics.get("latency_ms") or {}).get("p50") if base else None)
        rows.append([
            r.id, r.status,
            _num(r.size_bytes / 1024 if r.size_bytes else None, "{:.1f}"),
            _num(r.size_bytes / base.size_bytes if base and r.size_bytes else None, "{:.3f}"),
            _num(m.get("accuracy"), "{:.4f}"),
            _num(m["accuracy_drop"] * 100 if m.get("accuracy_drop") is not None else None, "{:+.2f}"),
            _num(m.get("agreement"), "{:.4f}"),
            _num(m.get("max_abs_err"), "{:.2e}"),
            _num(m.get("cosine"), "{:.6f}"),
            _num(lat.get("p50"), "{:.3f}"),
            _num(lat.get("p95"), "{:.3f}"),
            _num(lat["p50"] / base_p50 if lat.get("p50") and base_p50 else None, "{:.2f}"),
            _num(m["peak_rss_bytes"] / 2**20 if m.get("peak_rss_bytes") else None, "{:.0f}"),
        ])
    return rows


def format_table(results: list[VariantResult]) -> str:
    """A plain-text table for the terminal, reasons listed below it."""
    rows = [list(COLUMNS), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reasons = [f"  {r.id}: {r.reason}" for r in results if r.reason]
    return "\n".join(lines + (["", "reasons:", *reasons] if reasons else []))


def write_report(
    directory: Path, manifest: Manifest, results: list[VariantResult], reference_accuracy: float | None
) -> None:
    """Write ``report.md``, ``report.json`` and ``report.png`` into the release directory."""
    directory = Path(directory)
    (directory / REPORT_JSON).write_text(json.dumps({
        "model": manifest.model, "version": manifest.version, "reference": manifest.reference,
        "variants": [r.to_dict() for r in results],
    }, indent=2, default=str) + "\n")
    plotted = write_plot(directory / REPORT_PNG, results, reference_accuracy)
    (directory / REPORT_MD).write_text(markdown(manifest, results, plotted))


def markdown(manifest: Manifest, results: list[VariantResult], plotted: bool) -> str:
    ref = manifest.reference
    header = "| " + " | ".join((*COLUMNS, "reason")) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    body = [
        "| " + " | ".join((*row, (r.reason or "").replace("|", "/"))) + " |"
        for row, r in zip(table_rows(results), results, strict=True)
    ]
    shipped = [r.id for r in results if r.shipped]
    lines = [
        f"# {manifest.model} {manifest.version}: conversion report",
        "",
        f"Task: {manifest.task['kind']}. Reference (PyTorch): {ref['params']:,} parameters, "
        f"{ref['macs']:,} MACs" + (f", accuracy {ref['accuracy']:.4f}" if "accuracy" in ref else "")
        + ".",
        f"Measured on {_host(results)}; latency is one sample at a time on the variant's runtime.",
        "",
        f"Shipped ({len(shipped)}): {', '.join(shipped) or 'none'}. Variants that failed a gate "
        "are listed with their reason and left out of the release; `not_validated` means no "
        "runtime for the format on this host (the spec was checked instead).",
        "",
        header, rule, *body, "",
    ]
    if plotted:
        lines += ["![size vs accuracy vs latency](report.png)", ""]
    return "\n".join(lines)


def write_plot(path: Path, results: list[VariantResult], reference_accuracy: float | None) -> bool:
    """Size (x) against accuracy or agreement (y), marker area by p50 latency; False when
    matplotlib is missing or nothing was measured."""
    measured = [r for r in results if r.metrics.get("agreement") is not None and r.size_bytes]
    if not measured:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    use_acc = all(r.metrics.get("accuracy") is not None for r in measured)
    metric = "accuracy" if use_acc else "agreement"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    p50s = [(r.metrics.get("latency_ms") or {}).get("p50") or 0.0 for r in measured]
    scale = 900.0 / max(max(p50s), 1e-9)
    colors = {"onnx": "tab:blue", "tflite": "tab:orange", "coreml": "tab:green"}
    for r, p50 in zip(measured, p50s, strict=True):
        ax.scatter(r.size_bytes / 1024, r.metrics[metric], s=40 + p50 * scale, alpha=0.6,
                   color=colors.get(r.format, "tab:gray"),
                   edgecolors="black" if r.shipped else "red", linewidths=1.5)
        ax.annotate(f"{r.id}\n{p50:.2f} ms", (r.size_bytes / 1024, r.metrics[metric]),
                    fontsize=7, xytext=(5, 4), textcoords="offset points")
    if use_acc and reference_accuracy is not None:
        ax.axhline(reference_accuracy, color="gray", linestyle="--", linewidth=1,
                   label="PyTorch reference")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("file size (KiB, log scale)")
    ax.set_ylabel(metric)
    ax.set_title("Variants: size vs " + metric + " (marker area = p50 latency; red edge = gate failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _host(results: list[VariantResult]) -> str:
    for r in results:
        if r.metrics.get("host"):
            return r.metrics["host"]
    return "this host"


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)
