"""CSV table: exact round trip (repr floats, csv quoting), spreadsheet-style input, bad files."""

from __future__ import annotations

import csv
import io
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantviz.errors import QuantvizError
from quantviz.export.csv_format import COLUMNS, dumps_csv, loads_csv, read_csv, write_csv
from quantviz.table import CalibrationTable, TensorEntry
from tests.strategies import EntryValues, entry_values

NAME_CHARS = st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"])
NAMES = st.text(NAME_CHARS, min_size=1, max_size=24)


def same_float(a: float, b: float) -> bool:
    """Bit-equal, except that any NaN matches any NaN (repr keeps no NaN payload)."""
    return (math.isnan(a) and math.isnan(b)) or struct.pack(">d", a) == struct.pack(">d", b)


def same_entry(a: TensorEntry, b: TensorEntry) -> bool:
    floats = all(same_float(getattr(a, f), getattr(b, f)) for f in ("min", "max", "threshold", "scale"))
    cos = (a.cosine is None and b.cosine is None) or (
        a.cosine is not None and b.cosine is not None and same_float(a.cosine, b.cosine)
    )
    rest = (a.method, a.zero_point, a.note, a.float_kept, a.shared_with) == (
        b.method,
        b.zero_point,
        b.note,
        b.float_kept,
        b.shared_with,
    )
    return floats and cos and rest


def table(entries: dict[str, TensorEntry]) -> CalibrationTable:
    return CalibrationTable("m.onnx", "abc", {}, entries)


def test_header_and_one_row_by_plain_csv_reader() -> None:
    e = TensorEntry(
        "kl", -2.5, 2.5, 2.5, 0.1 / 3, 0, cosine=0.999, note='reviewed, "keep"', float_kept=True, shared_with=("a,b", "c")
    )
    text = dumps_csv(table({'conv "1", out': e}))
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == COLUMNS
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["name"] == 'conv "1", out'
    assert float(row["scale"]) == 0.1 / 3  # repr: shortest text that reads back to the same double
    assert row["float"] == "true"
    assert row["note"] == 'reviewed, "keep"'


@given(
    entries=st.dictionaries(
        NAMES,
        st.tuples(entry_values(), st.integers(-128, 255), st.text(max_size=20), st.lists(NAMES, max_size=3)),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=60, deadline=None)
def test_round_trip_is_exact(entries: dict[str, tuple[EntryValues, int, str, list[str]]]) -> None:
    # what the writer accepts (quantviz.schema) reads back exactly
    src = {
        n: TensorEntry("m", lo, hi, t, s, zp, cos, note, kept, tuple(sw))
        for n, ((lo, hi, t, s, cos, kept), zp, note, sw) in entries.items()
    }
    back = loads_csv(dumps_csv(table(src)))
    assert list(back.tensors) == list(src)
    for n, e in src.items():
        assert same_entry(e, back.tensors[n]), (n, e, back.tensors[n])


def test_file_round_trip_and_spreadsheet_bom(tmp_path: Path) -> None:
    src = table({"x": TensorEntry("minmax", 0.0, 6.0, 6.0, 6.0 / 255, 0)})
    path = tmp_path / "t.csv"
    write_csv(src, path)
    assert same_entry(read_csv(path).tensors["x"], src.tensors["x"])
    # a spreadsheet saves with a byte-order mark, CRLF and may drop optional columns
    edited = "\ufeffname,method,min,max,threshold,scale\r\nx,edited,-1,1,1,0.5\r\n"
    back = loads_csv(edited.encode("utf-8"))
    e = back.tensors["x"]
    assert (e.method, e.min, e.max, e.threshold, e.scale, e.zero_point, e.cosine, e.float_kept) == (
        "edited",
        -1.0,
        1.0,
        1.0,
        0.5,
        0,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("name,method,min,max,scale\nx,kl,0,1,0.1\n", "'threshold'"),
        ("name,method,min,max,threshold,scale\nx,kl,0,1,1,0.1\ny,kl,0,abc,1,0.1\n", "Line 3.*'max'.*'abc'"),
        ("name,method,min,max,threshold,scale,zero_point\nx,kl,0,1,1,0.1,1.5\n", "Line 2.*'zero_point'"),
        ("name,method,min,max,threshold,scale,float\nx,kl,0,1,1,0.1,maybe\n", "Line 2.*'float'"),
        ("name,method,min,max,threshold,scale,shared_with\nx,kl,0,1,1,0.1,a;b\n", "Line 2.*'shared_with'"),
        ("name,method,min,max,threshold,scale\nx,kl,0,1,1,-0.1\n", "Line 2.*'scale'"),
        ("name,method,min,max,threshold,scale\nx,kl,0,1,1,0.1\nx,kl,0,1,1,0.1\n", "Line 3 .*repeats"),
        ("name,method,min,max,threshold,scale\nx,kl,0,1,1,0.1,extra\n", "Line 2 .*7 fields"),
    ],
)
def test_malformed_csv_names_the_line_or_column(text: str, match: str) -> None:
    with pytest.raises(QuantvizError, match=match):
        loads_csv(text)


def test_not_utf8_is_refused() -> None:
    with pytest.raises(QuantvizError, match="UTF-8"):
        loads_csv(b"name,method\n\xff\xfe\n")
