"""Helpers every table format shares: building entries from what a foreign file stores, checks.

Foreign formats store less than quantviz JSON: TensorRT a float32 scale, onnxruntime a range, ncnn an
inverse scale. Readers turn each into a full TensorEntry with the same maths quantviz uses when it
calibrates (quantviz/fakequant.py), so an imported table can be diffed against a computed one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantviz.config import INT8_MAX
from quantviz.errors import QuantvizError
from quantviz.fakequant import asymmetric_params, symmetric_scale
from quantviz.limits import TABLE_BYTES
from quantviz.safeio import read_input_bytes
from quantviz.schema import check_table
from quantviz.table import CalibrationTable, TensorEntry

LINE_BREAKS = ("\n", "\r")


def symmetric_entry(method: str, threshold: float, scale: float | None = None, **fields: Any) -> TensorEntry:
    """An int8 symmetric entry: range [-T, T], zero point 0, s = T / 127 unless the file stored s itself."""
    s = symmetric_scale(threshold) if scale is None else float(scale)
    return TensorEntry(method=method, min=-threshold, max=threshold, threshold=threshold, scale=s, zero_point=0, **fields)


def range_entry(method: str, lo: float, hi: float, **fields: Any) -> TensorEntry:
    """An entry from a stored [lo, hi]: symmetric when lo == -hi, else uint8 asymmetric (quantviz's maths)."""
    if lo == -hi:
        return symmetric_entry(method, abs(hi), **fields)
    scale, zp, nlo, nhi = asymmetric_params(lo, hi)
    return TensorEntry(method=method, min=nlo, max=nhi, threshold=max(abs(nlo), abs(nhi)), scale=scale, zero_point=zp, **fields)


def is_symmetric(entry: TensorEntry) -> bool:
    """True for an int8 symmetric entry (range [-T, T], zero point 0)."""
    return entry.zero_point == 0 and entry.min == -entry.max


def int8_scale(entry: TensorEntry) -> float:
    """The int8 symmetric scale an engine like TensorRT needs: the table's own scale when the entry is
    symmetric, else T / 127 for T = max(|min|, |max|) (a uint8 scale would be about twice too small)."""
    if is_symmetric(entry):
        return entry.scale
    return symmetric_scale(entry.threshold)


def exported_entries(table: CalibrationTable, fmt: str) -> dict[str, TensorEntry]:
    """The entries an engine format carries: tensors kept in float are left out (these formats have no
    way to say "float" except ncnn's '#', which ncnn.py handles itself). Non-finite values are refused."""
    out: dict[str, TensorEntry] = {}
    for name, e in table.tensors.items():
        check_name(name, fmt)
        if e.float_kept:
            continue
        if not all(math.isfinite(v) for v in (e.threshold, e.scale, e.min, e.max)):
            raise QuantvizError(
                f"Tensor '{name}' has a non-finite threshold or scale: recalibrate it or keep it in float before exporting to {fmt}."
            )
        out[name] = e
    return out


def check_name(name: str, fmt: str) -> None:
    """Line-based formats cannot hold a name containing a line break."""
    if any(c in name for c in LINE_BREAKS):
        raise QuantvizError(f"Tensor name {name!r} contains a line break, which the {fmt} format cannot hold.")


def imported_table(
    tensors: Mapping[str, TensorEntry],
    source_format: str,
    settings: Mapping[str, Any] | None = None,
    weights: Mapping[str, dict[str, Any]] | None = None,
    model_name: str = "",
    model_sha256: str = "",
) -> CalibrationTable:
    """A CalibrationTable for entries read from a foreign file; settings say where it came from and
    whether every entry is int8 symmetric."""
    symmetric = all(is_symmetric(e) for e in tensors.values())
    s: dict[str, Any] = {"dtype": "int8" if symmetric else "uint8", "symmetric": symmetric, "source_format": source_format}
    s.update(settings or {})
    table = CalibrationTable(model_name, model_sha256, s, dict(tensors), weights=dict(weights or {}))
    return check_table(table, f"The {source_format} table")


def threshold_from_scale(scale: float) -> float:
    """T = s * 127 (TensorRT and QDQ store the scale, quantviz shows the threshold)."""
    return float(scale) * INT8_MAX


def parse_float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise QuantvizError(f"{where}: {text!r} is not a number.") from None


def decode_text(data: bytes | str, what: str) -> str:
    """UTF-8 text (a byte-order mark from a spreadsheet editor is dropped)."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QuantvizError(f"The {what} is not UTF-8 text (byte {exc.start} cannot be decoded).") from None


def split_lines(text: str) -> list[str]:
    """Lines split on '\\n' only (str.splitlines also splits on characters a tensor name may hold,
    such as U+2028 or U+001C); a trailing '\\r' (Windows line end) is dropped."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_bytes(path: str | Path) -> bytes:
    """A table file's bytes (refused when missing, a folder, or beyond quantviz.limits.TABLE_BYTES)."""
    p = Path(path)
    if not p.exists():
        raise QuantvizError(f"The file '{p}' does not exist.")
    return read_input_bytes(p, "file", TABLE_BYTES)
