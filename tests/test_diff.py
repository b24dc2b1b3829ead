"""diff_tables: ratios computed here, ordering by |log ratio|, one-sided tensors, CSV and text output."""

from __future__ import annotations

import csv
import io
import math

from quantviz.export.diff import A_ONLY, B_ONLY, BOTH, COLUMNS, diff_tables, dumps_diff_csv, format_diff, summary
from quantviz.table import CalibrationTable, TensorEntry


def table(thresholds: dict[str, float], method: str = "kl") -> CalibrationTable:
    return CalibrationTable("m", "", {}, {n: TensorEntry(method, -t, t, t, t / 127, 0) for n, t in thresholds.items()})


A = table({"x": 1.0, "y": 2.0, "z": 4.0, "zero": 0.0, "only_a": 1.0, "both_zero": 0.0}, "kl")
B = table({"x": 2.0, "y": 1.0, "z": 4.4, "zero": 3.0, "only_b": 3.0, "both_zero": 0.0}, "minmax")


def test_ratios_and_order() -> None:
    rows = diff_tables(A, B)
    by_name = {r.name: r for r in rows}
    assert by_name["x"].ratio == 2.0 / 1.0
    assert by_name["y"].ratio == 1.0 / 2.0
    assert by_name["z"].ratio == 4.4 / 4.0
    assert by_name["zero"].ratio == math.inf  # 3 / 0
    assert by_name["both_zero"].ratio == 1.0  # two all-zero tensors agree
    assert (by_name["x"].scale_a, by_name["x"].scale_b) == (1.0 / 127, 2.0 / 127)
    assert (by_name["x"].method_a, by_name["x"].method_b) == ("kl", "minmax")
    # |ln 2| ties for x and y (doubling and halving rank alike; then by name), |ln 1.1| next, ln 1 = 0 last
    assert [r.name for r in rows] == ["zero", "x", "y", "z", "both_zero", "only_a", "only_b"]
    assert [r.present for r in rows][-2:] == [A_ONLY, B_ONLY]
    assert by_name["only_a"].threshold_b is None and by_name["only_b"].threshold_a is None
    assert all(r.present == BOTH for r in rows[:5])


def test_csv_and_text_output() -> None:
    rows = diff_tables(A, B)
    parsed = list(csv.DictReader(io.StringIO(dumps_diff_csv(rows), newline="")))
    assert tuple(parsed[0].keys()) == COLUMNS
    x = next(r for r in parsed if r["name"] == "x")
    assert float(x["ratio"]) == 2.0 and x["present"] == BOTH
    only_b = next(r for r in parsed if r["name"] == "only_b")
    assert only_b["threshold_a"] == "" and float(only_b["threshold_b"]) == 3.0
    text = format_diff(rows, limit=3)
    assert text.splitlines()[0].split()[:2] == ["tensor", "threshold"]
    assert "4 more rows" in text
    assert (
        summary(rows)
        == "5 tensors in both tables (4 with thresholds differing by more than 1e-05 relative), 1 in A only, 1 in B only."
    )


def test_identical_tables() -> None:
    rows = diff_tables(A, A)
    assert all(r.ratio == 1.0 and r.present == BOTH for r in rows)
