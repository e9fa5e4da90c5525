"""`vaedeploy bench --compare` on two result documents written here with known figures: every ratio under its header
is B over A, rows are matched by their whole identity (precision included), and repeats reduce to their median."""
import re

import pytest

from vaedeploy.bench import output


def _row(p50_ms: float, items_per_s: float, precision: str = "fp32", repeat: int = 0, stable: bool = True) -> dict:
    return {"bundle": "vae", "backend": "onnxruntime", "device": "cpu", "precision": precision, "op": "decode",
            "batch": 8, "concurrency": 1, "windows": 3, "stable": stable, "status": "stable" if stable else "unstable",
            "calls": 30, "items_per_s": float(items_per_s), "errors": 0, "repeat": repeat, "p50_ms": p50_ms,
            "p90_ms": p50_ms * 1.5, "p95_ms": p50_ms * 1.6, "p99_ms": p50_ms * 2, "mean_ms": p50_ms, "cv": 0.1}


def _result(rows: list[dict], command: str) -> dict:
    return output.check({"benchmark": "vaedeploy bench", "schema_version": output.SCHEMA_VERSION, "notes": [],
                         "environment": {"date": "2026-12-07", "command": command, "cpu": "test cpu",
                                         "cpu_cores_available": 2, "versions": {}},
                         "settings": {}, "rows": rows})


def _table(text: str) -> list[dict]:
    """The comparison table as dictionaries, column by header (columns are two or more spaces apart)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("case"))
    header = re.split(r"\s{2,}", lines[start].strip())
    return [dict(zip(header, re.split(r"\s{2,}", line.strip()))) for line in lines[start + 1:]]


def test_every_ratio_is_b_over_a_under_its_header():
    a = _result([_row(p50_ms=2.0, items_per_s=500)], "bench A")
    b = _result([_row(p50_ms=0.5, items_per_s=1500)], "bench B")
    (row,) = _table(output.compare(a, b))
    assert row["A p50 ms"] == "2.000" and row["B p50 ms"] == "0.500"
    assert row["B/A p50"] == "0.25×" and row["B/A items/s"] == "3.00×"


def test_rows_are_matched_by_their_whole_identity():
    a = _result([_row(2.0, 500, "fp32"), _row(1.0, 1000, "fp16")], "bench A")
    b = _result([_row(3.0, 400, "fp16"), _row(4.0, 250, "fp32")], "bench B")
    rows = _table(output.compare(a, b))
    assert [(r["case"].split()[3], r["B/A p50"], r["B/A items/s"]) for r in rows] == [
        ("fp32", "2.00×", "0.50×"), ("fp16", "3.00×", "0.40×")]


def test_repeats_reduce_to_their_median_and_stable_only_when_every_repeat_was():
    repeats = [_row(p50, 100, repeat=k, stable=k != 2) for k, p50 in enumerate([1.0, 5.0, 2.0])]
    (case,) = output.by_case(repeats)
    assert case["p50_ms"] == 2.0 and (case["p50_min_ms"], case["p50_max_ms"]) == (1.0, 5.0)
    assert case["p99_ms"] == 4.0 and case["repeats"] == 3 and case["stable"] is False
    b = _result([_row(1.0, 100)], "bench B")
    (row,) = _table(output.compare(_result(repeats, "bench A"), b))
    assert row["A p50 ms"] == "2.000" and row["B/A p50"] == "0.50×"


@pytest.mark.parametrize("key", ["bundle", "backend", "device", "precision", "op", "batch", "concurrency"])
def test_rows_differing_in_one_identity_field_are_two_cases(key):
    other = _row(1.0, 100)
    other[key] = other[key] * 2 if isinstance(other[key], int) else other[key] + "2"
    assert len(output.by_case([_row(1.0, 100), other])) == 2
