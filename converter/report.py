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


def latency_ratio(result: VariantResult, results: list[VariantResult]) -> float | None:
    """p50 latency of ``result`` over its fp32 baseline's, measured in the same run."""
    base = baseline_for(result, results)
    p50 = (result.metrics.get("latency_ms") or {}).get("p50")
    base_p50 = (base.metrics.get("latency_ms") or {}).get("p50") if base else None
    return p50 / base_p50 if p50 and base_p50 else None


def notes(results: list[VariantResult]) -> dict[str, str]:
    """Things worth knowing that are not gate failures: int8 variants slower than fp32 here."""
    found = {}
    for r in results:
        ratio = latency_ratio(r, results)
        if r.precision.startswith("int8") and ratio is not None and ratio > 1.0:
            found[r.id] = f"int8 slower than fp32 on this host (p50 ×{ratio:.2f})"
    return found


def table_rows(results: list[VariantResult]) -> list[list[str]]:
    rows = []
    for r in results:
        m, base = r.metrics, baseline_for(r, results)
        lat = m.get("latency_ms") or {}
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
            _num(latency_ratio(r, results), "{:.2f}"),
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
    flagged = [f"  {variant_id}: {note}" for variant_id, note in notes(results).items()]
    if reasons:
        lines += ["", "reasons:", *reasons]
    if flagged:
        lines += ["", "notes:", *flagged]
    return "\n".join(lines)


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
    header = "| " + " | ".join((*COLUMNS, "reason / note")) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    flagged = notes(results)
    body = [
        "| " + " | ".join((*row, "; ".join(filter(None, (r.reason, flagged.get(r.id)))).replace("|", "/")))
        + " |"
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
        lines += ["![size, latency and accuracy per variant](report.png)", ""]
    return "\n".join(lines)


def write_plot(path: Path, results: list[VariantResult], reference_accuracy: float | None) -> bool:
    """Two panels: size against p50 latency (left) and accuracy, or agreement without labels,
    per variant (right). Red marks a variant that failed a gate. Returns False when matplotlib
    is missing or nothing was measured."""
    measured = [r for r in results if r.metrics.get("agreement") is not None and r.size_bytes]
    if not measured:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metric = "accuracy" if all(r.metrics.get("accuracy") is not None for r in measured) else "agreement"
    colors = {"onnx": "tab:blue", "tflite": "tab:orange", "coreml": "tab:green"}
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
    ordered = sorted(measured, key=lambda r: r.metrics[metric])
    values = [r.metrics[metric] for r in ordered]
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


def _host(results: list[VariantResult]) -> str:
    for r in results:
        if r.metrics.get("host"):
            return r.metrics["host"]
    return "this host"


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)
