"""The conversion report: a variant table (terminal and Markdown), JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converter.report_mixed import mixed_sections, write_mixed_plots
from converter.report_nas import write_search_plots
from converter.report_plots import write_pareto, write_plot
from converter.report_sections import (
    compression_sections,
    output_sections,
    search_sections,
    tuning_sections,
)
from converter.results import VariantResult
from edgeship.contract.manifest import Manifest

REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"
PARETO_PNG = "pareto.png"

COLUMNS = ("variant", "status", "size KB", "size ×fp32", "gzip KB", "accuracy", "drop pts", "agree",
           "cosine", "rel err", "max abs err", "p50 ms", "p95 ms", "p50 ×fp32", "peak RSS MB", "steps")
#: the metric each fidelity column shows; a column is left out when no variant measured it
#: (its task does not measure it: no agreement for an embedding, no accuracy without labels).
METRIC_COLUMNS = {"accuracy": "accuracy", "drop pts": "accuracy_drop", "agree": "agreement",
                  "cosine": "cosine", "rel err": "rel_err", "max abs err": "max_abs_err"}
#: what the report says each task is judged on (converter.task decides what is measured).
TASK_JUDGED_BY = {
    "classification": "top-1 agreement with the reference, and accuracy when the eval set has labels",
    "embedding": "cosine similarity and relative error against the reference",
    "regression": "relative error against the reference",
    "generic": "cosine similarity and relative error of each output against the reference",
}


def baseline_for(result: VariantResult, results: list[VariantResult]) -> VariantResult | None:
    """The fp32 variant to compare with: an uncompressed one (no model steps) of the same format
    if measured, else a compressed one of the same format, else any measured fp32."""
    fp32 = [r for r in results if r.precision == "fp32" and r.size_bytes]
    plain = [r for r in fp32 if not r.steps]
    same = [r for r in fp32 if r.format == result.format]
    same_plain = [r for r in plain if r.format == result.format]
    return (same_plain or same or plain or fp32 or [None])[0]


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


def model_steps(result: VariantResult) -> str:
    """The steps applied to the PyTorch model before export, e.g. ``prune:channel:l1:0.3 → fuse``."""
    return " → ".join(step["step"] for step in result.steps)


def columns(results: list[VariantResult]) -> list[str]:
    """:data:`COLUMNS` without the fidelity columns that no variant measured."""
    present = {key for r in results for key in r.metrics}
    return [c for c in COLUMNS if c not in METRIC_COLUMNS or METRIC_COLUMNS[c] in present]


def table_rows(results: list[VariantResult]) -> list[list[str]]:
    """One row per variant, cells in the order of :func:`columns`."""
    shown = columns(results)
    rows = []
    for r in results:
        m, base = r.metrics, baseline_for(r, results)
        lat = m.get("latency_ms") or {}
        cells = {
            "variant": r.id, "status": r.status,
            "size KB": _num(r.size_bytes / 1024 if r.size_bytes else None, "{:.1f}"),
            "size ×fp32": _num(r.size_bytes / base.size_bytes if base and r.size_bytes else None,
                               "{:.3f}"),
            "gzip KB": _num(r.gzip_size_bytes / 1024 if r.gzip_size_bytes else None, "{:.1f}"),
            "accuracy": _num(m.get("accuracy"), "{:.4f}"),
            "drop pts": _num(m["accuracy_drop"] * 100 if m.get("accuracy_drop") is not None else None,
                             "{:+.2f}"),
            "agree": _num(m.get("agreement"), "{:.4f}"),
            "cosine": _num(m.get("cosine"), "{:.6f}"),
            "rel err": _num(m.get("rel_err"), "{:.2e}"),
            # null in the metrics: the outputs were not finite
            "max abs err": "NaN/Inf" if "max_abs_err" in m and m["max_abs_err"] is None
            else _num(m.get("max_abs_err"), "{:.2e}"),
            "p50 ms": _num(lat.get("p50"), "{:.3f}"),
            "p95 ms": _num(lat.get("p95"), "{:.3f}"),
            "p50 ×fp32": _num(latency_ratio(r, results), "{:.2f}"),
            "peak RSS MB": _num(m["peak_rss_bytes"] / 2**20 if m.get("peak_rss_bytes") else None,
                                "{:.0f}"),
            "steps": model_steps(r) or "–",
        }
        rows.append([cells[c] for c in shown])
    return rows


def format_table(results: list[VariantResult]) -> str:
    """A plain-text table for the terminal, reasons listed below it."""
    rows = [columns(results), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reasons = [f"  {r.id}: {r.reason}" for r in results if r.reason]
    flagged = [f"  {variant_id}: {note}" for variant_id, note in notes(results).items()]
    if reasons:
        lines += ["", "reasons:", *reasons]
    if flagged:
        lines += ["", "notes:", *flagged]
    return "\n".join(lines)


def write_figures(directory: Path, results: list[VariantResult], reference_accuracy: float | None,
                  search: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Draw the report's figures into the release directory; returns ``{file name: title}`` of
    those drawn (none without matplotlib). Drawn before the manifest is signed: it lists them."""
    directory = Path(directory)
    drawn = {}
    if write_plot(directory / REPORT_PNG, results, reference_accuracy):
        drawn[REPORT_PNG] = "Size, latency and quality per variant"
    if write_pareto(directory / PARETO_PNG, results, search):
        drawn[PARETO_PNG] = "Pareto view: every measured candidate by size, latency and accuracy"
    for name in write_search_plots(directory, results):
        drawn[name] = "Architecture search: p50 latency against quality of every candidate"
    for name in write_mixed_plots(directory, results):
        drawn[name] = "Mixed precision: error against size and latency of every assignment"
    return drawn


def write_report(directory: Path, manifest: Manifest, results: list[VariantResult],
                 search: list[dict[str, Any]] | None = None) -> None:
    """Write ``report.md`` and ``report.json`` into the release directory (its figures, drawn by
    :func:`write_figures`, are those the manifest lists)."""
    directory = Path(directory)
    (directory / REPORT_JSON).write_text(json.dumps({
        "model": manifest.model, "version": manifest.version, "reference": manifest.reference,
        "variants": [r.to_dict() for r in results], "search": search or [],
    }, indent=2, default=str) + "\n")
    drawn = {entry["file"] for entry in manifest.figures}
    (directory / REPORT_MD).write_text(markdown(manifest, results, REPORT_PNG in drawn, search,
                                                PARETO_PNG in drawn))


def markdown(manifest: Manifest, results: list[VariantResult], plotted: bool,
             search: list[dict[str, Any]] | None = None, pareto: bool = False) -> str:
    ref = manifest.reference
    shown = columns(results)
    header = "| " + " | ".join((*shown, "reason / note")) + " |"
    rule = "|" + "---|" * (len(shown) + 1)
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
        f"Task: {manifest.task['kind']}; variants are judged on "
        f"{TASK_JUDGED_BY.get(manifest.task['kind'], 'their error against the reference')}.",
        "",
        f"Reference (PyTorch): {ref['params']:,} parameters, "
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
        lines += ["![size, latency and quality per variant](report.png)", ""]
    if pareto:
        lines += ["Pareto view: every measured candidate (variants, tuning attempts, search steps) by "
                  "size, latency and accuracy; the non-dominated ones are joined, shipped variants "
                  "are stars.", "", "![Pareto plot](pareto.png)", ""]
    lines += output_sections(results, [o["name"] for o in manifest.task["outputs"]])
    lines += compression_sections(results)
    lines += tuning_sections(results)
    lines += mixed_sections(results)
    lines += search_sections(search)
    return "\n".join(lines)


def _host(results: list[VariantResult]) -> str:
    for r in results:
        if r.metrics.get("host"):
            return r.metrics["host"]
    return "this host"


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)
