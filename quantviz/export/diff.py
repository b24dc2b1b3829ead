"""Compare two calibration tables tensor by tensor (`python -m quantviz diff A B`).

Each row: both thresholds, their ratio b / a, both scales, and whether the tensor is in both tables or
in one only. Rows present in both come first, the largest disagreement first (by |log(b / a)|, so
halving and doubling rank alike); then tensors in A only, then in B only, each by name.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from quantviz.safeio import write_bytes
from quantviz.table import CalibrationTable

BOTH = "both"
A_ONLY = "a only"
B_ONLY = "b only"
SAME_RTOL = 1e-5  # storing T as float32 (TensorRT hex, onnxruntime) moves it by about 1e-7 relative
COLUMNS = ("name", "threshold_a", "threshold_b", "ratio", "scale_a", "scale_b", "method_a", "method_b", "present")


@dataclass(frozen=True)
class DiffRow:
    """One tensor of the comparison; values are None on the side where the tensor is missing."""

    name: str
    threshold_a: float | None
    threshold_b: float | None
    ratio: float | None  # threshold_b / threshold_a (1 when both are 0, inf when only a is 0)
    scale_a: float | None
    scale_b: float | None
    method_a: str | None
    method_b: str | None
    present: str  # BOTH | A_ONLY | B_ONLY

    @property
    def log_ratio(self) -> float:
        """|ln(b / a)|: 0 for equal thresholds, inf when one is 0; NaN when undefined."""
        if self.ratio is None:
            return math.nan
        if self.ratio == 0 or math.isinf(self.ratio):
            return math.inf
        return abs(math.log(self.ratio)) if self.ratio > 0 else math.nan


def threshold_ratio(a: float, b: float) -> float:
    """b / a, with 0 / 0 = 1 (both tensors all zero agree) and x / 0 = inf."""
    if a == 0:
        return 1.0 if b == 0 else math.inf
    return b / a


def diff_tables(a: CalibrationTable, b: CalibrationTable) -> list[DiffRow]:
    rows: list[DiffRow] = []
    for name, ea in a.tensors.items():
        eb = b.tensors.get(name)
        if eb is None:
            rows.append(DiffRow(name, ea.threshold, None, None, ea.scale, None, ea.method, None, A_ONLY))
        else:
            ratio = threshold_ratio(ea.threshold, eb.threshold)
            rows.append(DiffRow(name, ea.threshold, eb.threshold, ratio, ea.scale, eb.scale, ea.method, eb.method, BOTH))
    rows += [
        DiffRow(name, None, eb.threshold, None, None, eb.scale, None, eb.method, B_ONLY)
        for name, eb in b.tensors.items()
        if name not in a.tensors
    ]

    def key(r: DiffRow) -> tuple[int, float, str]:
        order = {BOTH: 0, A_ONLY: 1, B_ONLY: 2}[r.present]
        lr = r.log_ratio
        return order, -(lr if not math.isnan(lr) else -1.0), r.name

    return sorted(rows, key=key)


def _cell(v: float | str | None) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def dumps_diff_csv(rows: list[DiffRow]) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(getattr(r, c)) for c in COLUMNS])
    return buf.getvalue()


def write_diff_csv(rows: list[DiffRow], path: str | Path) -> None:
    write_bytes(path, dumps_diff_csv(rows).encode("utf-8"), "output file (-o)")


def format_diff(rows: list[DiffRow], limit: int | None = None) -> str:
    """A fixed-width text table for a terminal (numbers to 6 significant digits)."""

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.6g}"

    shown = rows if limit is None else rows[:limit]
    body = [
        (r.name, num(r.threshold_a), num(r.threshold_b), num(r.ratio), num(r.scale_a), num(r.scale_b), r.present) for r in shown
    ]
    head = ("tensor", "threshold A", "threshold B", "B/A", "scale A", "scale B", "present")
    widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [head, *body]
    ]
    if limit is not None and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows (write them all with -o DIFF.csv)")
    return "\n".join(lines) + "\n"


def summary(rows: list[DiffRow]) -> str:
    both = [r for r in rows if r.present == BOTH]
    differ = [r for r in both if r.ratio is None or not abs(r.ratio - 1.0) <= SAME_RTOL]
    a_only = sum(r.present == A_ONLY for r in rows)
    b_only = sum(r.present == B_ONLY for r in rows)
    return f"{len(both)} tensors in both tables ({len(differ)} with thresholds differing by more than {SAME_RTOL:g} relative), {a_only} in A only, {b_only} in B only."


# An imported table naming fewer than this share of its tensors in the model is probably another model's.
MATCH_WARN_SHARE = 0.9


@dataclass(frozen=True)
class TableMatch:
    """How an imported table lines up with the model's own table (tensor names)."""

    matched: tuple[str, ...]  # the file's tensors the model has
    unknown: tuple[str, ...]  # the file's tensors the model lacks, in the file's order
    uncovered: tuple[str, ...]  # the model's tensors the file does not name
    other_model: str | None  # the model the file says it belongs to, when that is not this one

    @property
    def share(self) -> float:
        """Matched share of the file's tensors (1 for an empty file)."""
        n = len(self.matched) + len(self.unknown)
        return len(self.matched) / n if n else 1.0

    @property
    def few(self) -> bool:
        return self.share < MATCH_WARN_SHARE

    def warnings(self) -> list[str]:
        """Sentences for the person importing the file (none when it fits the model)."""
        out: list[str] = []
        if self.other_model is not None:
            out.append(f"This table was made for another model ({self.other_model}): the comparison is across models.")
        if self.few:
            n = len(self.matched) + len(self.unknown)
            out.append(
                f"Only {len(self.matched)} of the file's {n} tensors ({self.share:.0%}) are in this model; "
                f"the other {len(self.unknown)} are listed below and are left out of any adoption."
            )
        return out


def match_tables(mine: CalibrationTable, other: CalibrationTable) -> TableMatch:
    """Which of other's tensors mine (the model's table) has; whether other names another model
    (by content hash when both know one, else by name)."""
    matched = tuple(n for n in other.tensors if n in mine.tensors)
    unknown = tuple(n for n in other.tensors if n not in mine.tensors)
    uncovered = tuple(n for n in mine.tensors if n not in other.tensors)
    if other.model_sha256 and mine.model_sha256:
        differs = other.model_sha256 != mine.model_sha256
    else:
        differs = bool(other.model_name and mine.model_name and other.model_name != mine.model_name)
    other_model = None
    if differs:
        sha = f", model {other.model_sha256[:12]}" if other.model_sha256 else ""
        other_model = f"{other.model_name or 'unnamed'}{sha}"
    return TableMatch(matched, unknown, uncovered, other_model)
