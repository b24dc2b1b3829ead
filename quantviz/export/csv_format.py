"""CSV table: one row per tensor with a header row, plain enough to open in a spreadsheet (FORMATS.md).

Columns: name, method, min, max, threshold, scale, zero_point, cosine, note, float, shared_with.
Floats are written with Python's repr (the shortest text that reads back to the same double), so a
round trip is exact; quoting of names with commas, quotes or spaces is the csv module's. "float" is
true/false (the tensor is kept in float); shared_with is a JSON list of tensor names (names may hold
any character, so no separator would be safe). The table's model, settings and per-channel weight
scales are not in the CSV: quantviz JSON carries those.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from quantviz.errors import QuantvizError
from quantviz.export.common import decode_text, imported_table, read_bytes
from quantviz.export.format import Sniff, TableFormat, text_writer
from quantviz.safeio import write_bytes
from quantviz.table import CalibrationTable, TensorEntry

FORMAT = "CSV table"
COLUMNS = ("name", "method", "min", "max", "threshold", "scale", "zero_point", "cosine", "note", "float", "shared_with")
REQUIRED = ("name", "method", "min", "max", "threshold", "scale")
TRUE_WORDS = frozenset({"true", "1", "yes", "y"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", ""})


def _row(name: str, e: TensorEntry) -> list[str]:
    return [
        name,
        e.method,
        repr(float(e.min)),
        repr(float(e.max)),
        repr(float(e.threshold)),
        repr(float(e.scale)),
        str(int(e.zero_point)),
        "" if e.cosine is None else repr(float(e.cosine)),
        e.note,
        "true" if e.float_kept else "false",
        json.dumps(list(e.shared_with), ensure_ascii=False) if e.shared_with else "",
    ]


def dumps_csv(table: CalibrationTable) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for name, e in table.tensors.items():
        w.writerow(_row(name, e))
    return buf.getvalue()


def write_csv(table: CalibrationTable, path: str | Path) -> None:
    write_bytes(path, dumps_csv(table).encode("utf-8"))


def _number(text: str, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise QuantvizError(f"Line {line} of the CSV table, column '{column}': {text[:40]!r} is not a number.") from None
    return value


def _flag(text: str, line: int) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise QuantvizError(f"Line {line} of the CSV table, column 'float': {text[:40]!r} should be true or false.")


def _names(text: str, line: int) -> tuple[str, ...]:
    if not text.strip():
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise QuantvizError(
            f'Line {line} of the CSV table, column \'shared_with\': {text[:40]!r} should be a JSON list of names, like ["a", "b"].'
        )
    return tuple(value)


def loads_csv(data: str | bytes) -> CalibrationTable:
    text = decode_text(data, FORMAT)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise QuantvizError("The CSV table is empty: line 1 should be a header row starting with 'name'.") from None
    except csv.Error as exc:
        raise QuantvizError(f"Line 1 of the CSV table cannot be parsed: {exc}.") from None
    index = {col.strip(): i for i, col in enumerate(header)}
    missing = [c for c in REQUIRED if c not in index]
    if missing:
        raise QuantvizError(
            f"The CSV table's header row (line 1) has no column {', '.join(repr(c) for c in missing)}; it needs {', '.join(REQUIRED)}."
        )
    tensors: dict[str, TensorEntry] = {}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise QuantvizError(f"Line {reader.line_num} of the CSV table cannot be parsed: {exc}.") from None
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        elif len(row) > len(header):
            raise QuantvizError(f"Line {line} of the CSV table has {len(row)} fields but the header has {len(header)}.")

        def cell(col: str, row: list[str] = row) -> str:
            return row[index[col]] if col in index else ""

        name = cell("name")
        if name in tensors:
            raise QuantvizError(f"Line {line} of the CSV table repeats the tensor '{name}'.")
        zp_text = cell("zero_point").strip() or "0"
        try:
            zero_point = int(zp_text)
        except ValueError:
            raise QuantvizError(
                f"Line {line} of the CSV table, column 'zero_point': {zp_text[:40]!r} is not an integer."
            ) from None
        cos_text = cell("cosine").strip()
        cosine = _number(cos_text, line, "cosine") if cos_text else None
        values = {c: _number(cell(c).strip(), line, c) for c in ("min", "max", "threshold", "scale")}
        if values["scale"] < 0:
            raise QuantvizError(
                f"Line {line} of the CSV table, column 'scale': a scale cannot be negative ({values['scale']!r})."
            )
        tensors[name] = TensorEntry(
            method=cell("method"),
            zero_point=zero_point,
            cosine=cosine,
            note=cell("note"),
            float_kept=_flag(cell("float"), line),
            shared_with=_names(cell("shared_with"), line),
            min=values["min"],
            max=values["max"],
            threshold=values["threshold"],
            scale=values["scale"],
        )
    return imported_table(tensors, "csv", {})


def read_csv(path: str | Path) -> CalibrationTable:
    return loads_csv(read_bytes(path))


def _has_csv_header(s: Sniff) -> bool:
    try:
        header = next(csv.reader(io.StringIO(s.first)))
    except (csv.Error, StopIteration):
        return False
    names = {h.strip() for h in header}
    return "name" in names and "threshold" in names


FORMATS = (
    TableFormat(
        "csv",
        text_writer(dumps_csv),
        lambda data, _o: loads_csv(data),
        "calibration_table.csv",
        "CSV: one row per tensor, for spreadsheets",
        mime="text/csv",
        detect=((3, _has_csv_header), (5, lambda s: not s.binary and s.filename.endswith(".csv"))),
    ),
)
