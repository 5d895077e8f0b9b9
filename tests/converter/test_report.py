from __future__ import annotations

from converter.report import format_table, latency_ratio, notes, table_rows
from converter.results import VariantResult


def result(variant_id: str, fmt: str, precision: str, p50: float, size: int, status="passed", reason=None):
    return VariantResult(variant_id, variant_id, fmt, precision, status=status, reason=reason,
                         size_bytes=size, metrics={"agreement": 1.0, "latency_ms": {"p50": p50, "p95": p50}})


def test_ratios_compare_with_fp32_of_the_same_format_and_flag_slow_int8():
    results = [
        result("onnx-fp32", "onnx", "fp32", 1.0, 1000),
        result("onnx-int8-dynamic", "onnx", "int8-dynamic", 3.0, 300),
        result("onnx-int8-static", "onnx", "int8", 0.5, 260),
        result("tflite-fp32", "tflite", "fp32", 2.0, 1100),
        result("tflite-int8", "tflite", "int8", 1.0, 280, status="failed", reason="agreement 97% < 99%"),
    ]
    assert latency_ratio(results[1], results) == 3.0
    assert latency_ratio(results[4], results) == 0.5  # against tflite-fp32, not onnx-fp32
    assert notes(results) == {"onnx-int8-dynamic": "int8 slower than fp32 on this host (p50 ×3.00)"}
    rows = {row[0]: row for row in table_rows(results)}
    assert rows["onnx-int8-static"][3] == "0.260" and rows["tflite-int8"][3] == "0.255"
    text = format_table(results)
    assert "tflite-int8: agreement 97% < 99%" in text and "onnx-int8-dynamic: int8 slower" in text
