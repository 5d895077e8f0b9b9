"""Markdown sections of the report beyond the variant table: what each compression step did,
the accuracy-aware tuning of each variant (attempts and per-layer sensitivity) and the
``[targets]`` search loops."""

from __future__ import annotations

from typing import Any

from converter.report_nas import is_search, search_lines
from converter.results import VariantResult


def compression_sections(results: list[VariantResult]) -> list[str]:
    """One section per distinct chain of model steps: facts of each step, tables per layer."""
    chains: dict[tuple[str, ...], tuple[list[dict[str, Any]], list[str]]] = {}
    for r in results:
        if r.steps:
            key = tuple(s["step"] for s in r.steps)
            chains.setdefault(key, (r.steps, []))[1].append(r.id)
    if not chains:
        return []
    lines = ["## Compression steps", "",
             "Steps run on the PyTorch model before export, in order; variants built from the same "
             "chain share its result.", ""]
    for key, (steps, ids) in chains.items():
        lines += [f"### {' → '.join(key)}", "", f"Variants: {', '.join(ids)}.", ""]
        for step in steps:
            lines += _step_lines(step)
        lines += _packed_lines([r for r in results if r.id in ids])
    return lines


def _packed_lines(results: list[VariantResult]) -> list[str]:
    """Packed variants ship fewer bytes than the runtime keeps: say both."""
    lines = []
    for r in results:
        d = r.built.details if r.built else {}
        if "packing" in d:
            lines += [f"`{r.id}` ships {d['wire_bytes']:,} B ({d['packed_weights']:,} weights at "
                      f"{d['packing']['bits_per_weight']} bits + a float32 scale per channel); "
                      f"onnxruntime unpacks them at load and keeps {d['runtime_weight_bytes']:,} B "
                      f"of float32 weights (the fp32 file is {d['fp32_file_bytes']:,} B).", ""]
    return lines


def _step_lines(step: dict[str, Any]) -> list[str]:
    label = step["step"]
    lines = [f"**{label}** ({step.get('seconds', 0):.1f} s)", ""]
    if label == "fuse":
        pairs = step.get("pairs", [])
        lines += [f"{len(pairs)} Conv+BatchNorm pairs folded (found by {step.get('found_by')}):", "",
                  "| conv | batchnorm | activation after |", "|---|---|---|"]
        lines += [f"| {p['conv']} | {p['bn']} | {p['activation'] or '–'} |" for p in pairs]
    elif label.startswith("prune:l1-unstructured"):
        lines += [f"Real sparsity over all pruned weights: {step['sparsity']:.2%}.", "",
                  "| layer | weights | sparsity |", "|---|---|---|"]
        lines += [f"| {name} | {v['weights']:,} | {v['sparsity']:.2%} |"
                  for name, v in step["layers"].items()]
    elif label.startswith("prune:channel"):
        lines += [
            f"MACs {step['macs_before']:,} → {step['macs_after']:,} (×{step['macs_ratio']:.3f}); "
            f"parameters {step['params_before']:,} → {step['params_after']:,} "
            f"(×{step['params_ratio']:.3f}); kept whole: {', '.join(step['kept_layers'])}.", "",
            "| layer | channels before | after |", "|---|---|---|",
        ]
        lines += [f"| {name} | {b} | {a} |" for name, (b, a) in step["channels"].items()]
    elif is_search(step):
        lines += search_lines(step)
    elif label.startswith("ternary"):
        lines += [f"{step['ternary_share']:.1%} of the Conv/Linear weights are ternary; kept in "
                  f"float: {', '.join(step['kept_layers']) or 'none'}.", "",
                  "| layer | weights | zeros | scale min | scale max | values per channel |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {v['weights']:,} | {v['zeros']:.1%} | {v['scale_min']:.4g} | "
                  f"{v['scale_max']:.4g} | {v['values_per_channel']} |" for name, v in step["layers"].items()]
    elif label.startswith("distill"):
        lines += [
            f"Student `{step['student']}`: {step['student_params']:,} parameters "
            f"(×{step['params_ratio']:.3f} of the teacher's {step['teacher_params']:,}), "
            f"{step['student_macs']:,} MACs; T {step['temperature'][0]:g} → "
            f"{step['temperature'][1]:g}, alpha {step['alpha']:g}, {step['epochs']} epochs"
            + (f", features {', '.join(' → '.join(p) for p in step['features'])}"
               if step["features"] else "") + ".",
        ]
        if step.get("teachers"):
            lines += ["", f"Teachers ({step['weighting']} weighting; features match the first): "
                      + ", ".join(f"`{t}` (mean weight {w:.3f}, eval accuracy {_cell(a)})" for t, w, a
                                  in zip(step["teachers"], step["mean_teacher_weights"],
                                         step["teacher_accuracy"], strict=False)) + "."]
    history = step.get("fine_tune") or step.get("history") or []
    if history:
        lines += ["", _history_table(history, "fine-tune" if "fine_tune" in step else "training")]
    return [*lines, ""]


def _history_table(history: list[dict[str, Any]], what: str) -> str:
    keys = [k for k in history[0] if k != "epoch"]
    head = f"| {what} epoch | " + " | ".join(k.replace("_", " ") for k in keys) + " |"
    rows = [head, "|---|" + "---|" * len(keys)]
    for entry in history:
        rows.append(f"| {entry['epoch']} | " + " | ".join(_cell(entry.get(k)) for k in keys) + " |")
    return "\n".join(rows)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.2f}"
    return str(value)


def tuning_sections(results: list[VariantResult]) -> list[str]:
    """Per tuned variant: every attempt with its metrics and why it was rejected, then the
    per-layer sensitivity table."""
    tuned = [r for r in results if r.tuning]
    if not tuned:
        return []
    lines = ["## Accuracy-aware tuning", "",
             "Static int8 variants that missed their gates were rebuilt with other calibrations, "
             "then with the most sensitive layers kept in float, one more each time, until one "
             "passed or the budget ran out. Each attempt was validated on the real runtime.", ""]
    for r in tuned:
        t = r.tuning or {}
        quality = _fidelity_columns([a["metrics"] for a in t["attempts"]])
        lines += [f"### {r.id}: {t['outcome']} after {len(t['attempts'])} attempts "
                  f"({t['seconds']:.0f} s)", "",
                  "| # | change | settings | status | " + "".join(f"{c} | " for c, _ in quality)
                  + "p50 ms | size KB | shortfall | why rejected |",
                  "|---|---|---|---|" + "---|" * len(quality) + "---|---|---|---|"]
        for a in t["attempts"]:
            m = a["metrics"]
            mark = " (kept)" if a["kept"] else ""
            lines.append(
                f"| {a['attempt']}{mark} | {_short(a['change'])} | {a['settings']} | {a['status']} | "
                + "".join(f"{_cell(_value(m, key))} | " for _, key in quality)
                + f"{_cell(m.get('latency_p50_ms'))} | "
                f"{_cell(m['size_bytes'] / 1024 if m.get('size_bytes') else None)} | "
                f"{a['shortfall']:.3g} | {(a['rejected'] or '–').replace('|', '/')} |")
        lines.append("")
        if t["sensitivity"]:
            kept = set(t["kept"].get("float_layers") or [])
            agree = all(row.get("agreement") is not None for row in t["sensitivity"])  # classifiers
            lines += ["Per-layer sensitivity (each layer quantized alone; error = relative squared "
                      "error of the outputs against float):", "",
                      "| rank | layer | op | module | error |" + (" agreement with float |" if agree else "")
                      + " kept in float |", "|---|---|---|---|---|" + ("---|" if agree else "") + "---|"]
            for rank, row in enumerate(t["sensitivity"], start=1):
                lines.append(f"| {rank} | {_short(row['layer'])} | {row['op']} | {row['module'] or '–'} | "
                             f"{row['score']:.3g} | " + (f"{row['agreement']:.3f} | " if agree else "")
                             + f"{'yes' if row['layer'] in kept else ''} |")
            lines.append("")
    return lines


#: fidelity columns of the tuning table, shown when an attempt measured them.
_FIDELITY = (("accuracy", "accuracy"), ("drop pts", "accuracy_drop"), ("agree", "agreement"),
             ("cosine", "cosine"), ("rel err", "rel_err"))


def _fidelity_columns(metrics: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(label, key) for label, key in _FIDELITY if any(m.get(key) is not None for m in metrics)]


def _value(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return value * 100 if key == "accuracy_drop" and value is not None else value


def output_sections(results: list[VariantResult], names: list[str]) -> list[str]:
    """Per-output fidelity of each measured variant of a model with several outputs: the
    cosine and relative-error gates check each output, so each is shown."""
    measured = [r for r in results if r.metrics.get("outputs")]
    if len(names) < 2 or not measured:
        return []
    keys = [(label, key) for label, key in (("cosine", "cosine"), ("rel err", "rel_err"),
                                            ("max abs err", "max_abs_err"))
            if any(key in v for r in measured for v in r.metrics["outputs"].values())]
    lines = ["## Per-output error", "",
             "Each output against the reference; the cosine and relative-error gates apply to "
             "each one.", "",
             "| variant | output | " + " | ".join(label for label, _ in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in measured:
        for name in names:
            values = r.metrics["outputs"].get(name, {})
            lines.append(f"| {r.id} | {name} | "
                         + " | ".join(_metric(values.get(key), key) for _, key in keys) + " |")
    return [*lines, ""]


def _metric(value: float | None, key: str) -> str:
    """Cosine to 6 decimals, errors in scientific notation (they span many decades)."""
    if value is None:
        return "–"
    return f"{value:.6f}" if key == "cosine" else f"{value:.2e}"


def _short(text: str, limit: int = 48) -> str:
    """Long TFLite tensor names cut in the middle (the full names are in report.json)."""
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit // 2):]


def search_sections(search: list[dict[str, Any]] | None) -> list[str]:
    """The ``[targets]`` search: each loop step with its rate, metrics and verdict."""
    if not search:
        return []
    lines = ["## Target search", "",
             "quantize → accuracy met? (else tune) → size/latency met? (else prune channels, "
             "bisecting the rate, keeping the accuracy gate) → package.", ""]
    for entry in search:
        targets = entry["targets"]
        wanted = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in targets.items()
                           if k.startswith("max_") and v is not None and k != "max_prune")
        lines += [f"### {entry['variant']}: {entry['outcome']}", "", f"Targets: {wanted}.", "",
                  "| # | loop | prune rate | steps / settings | accuracy | drop pts | size KB | p95 ms "
                  "| MACs | accuracy met | size/latency met | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, step in enumerate(entry["steps"]):
            m = step["metrics"]
            drop = m.get("accuracy_drop")
            lines.append(
                f"| {n} | {step['loop']} | {_cell(step['rate'])} | {_short(step['settings'], 70)} | "
                f"{_cell(m.get('accuracy'))} | {_cell(drop * 100 if drop is not None else None)} | "
                f"{_cell(m['size_bytes'] / 1024 if m.get('size_bytes') else None)} | "
                f"{_cell(m.get('latency_p95_ms'))} | {_cell(m.get('macs'))} | "
                f"{_yes(step['accuracy_met'])} | {_yes(step['performance_met'])} | "
                f"{(step['verdict'] or '–').replace('|', '/')} |")
        lines.append("")
    return lines


def _yes(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")
