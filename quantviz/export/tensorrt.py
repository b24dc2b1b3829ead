"""TensorRT calibration cache (the text file IInt8Calibrator.writeCalibrationCache produces).

    TRT-8601-EntropyCalibration2
    input.1: 3caa54a9
    /conv1/Conv_output_0: 3d418306

First line ``TRT-<version digits>-<algorithm>``; TensorRT ignores a cache whose version or algorithm
does not match the builder, so the user chooses it. Then ``<name>: <hex>`` with hex the big-endian
IEEE-754 float32 bit pattern of the int8 scale s = T / 127 (struct.pack('>f', s).hex()). Tensor names
may hold spaces, brackets and colons ("(Unnamed Layer* 3) [Activation]_output"): a line is split on its
LAST ": ". TensorRT writes the hex without leading zeros, so 1 to 8 digits are accepted.

The writer uses the table's own float32 scale, so reading back gives the same bits; tensors kept in
float are left out (TensorRT then has no range for them). Reading gives T = s * 127.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

from quantviz.errors import QuantvizError
from quantviz.export.common import (
    decode_text,
    exported_entries,
    imported_table,
    int8_scale,
    read_bytes,
    split_lines,
    symmetric_entry,
    threshold_from_scale,
)
from quantviz.export.format import TableFormat
from quantviz.safeio import write_bytes
from quantviz.table import CalibrationTable, TensorEntry

FORMAT = "TensorRT calibration cache"
DEFAULT_TRT_HEADER = "TRT-8601-EntropyCalibration2"
METHOD = "trt-cache"
HEADER_PATTERN = re.compile(r"TRT-(\d+)-([A-Za-z][A-Za-z0-9_]*)")
HEX_PATTERN = re.compile(r"[0-9A-Fa-f]{1,8}")
SEPARATOR = ": "


def check_header(header: str) -> str:
    """The header unchanged if it looks like TRT-<digits>-<algorithm>, else a QuantvizError."""
    if not HEADER_PATTERN.fullmatch(header):
        raise QuantvizError(
            f"The TensorRT cache header must look like TRT-<version digits>-<algorithm> "
            f"(e.g. {DEFAULT_TRT_HEADER} or TRT-100300-MinMaxCalibration), not {header!r}."
        )
    return header


def scale_hex(scale: float) -> str:
    """Big-endian float32 bits of s as 8 hex digits (T = 1.0: s = 1/127 -> 3c010204)."""
    try:
        return struct.pack(">f", scale).hex()
    except OverflowError:
        raise QuantvizError(f"The scale {scale!r} does not fit in a float32.") from None


def hex_scale(text: str) -> float:
    """Inverse of scale_hex (shorter hex is zero-padded on the left, as TensorRT drops leading zeros)."""
    return float(struct.unpack(">f", bytes.fromhex(text.zfill(8)))[0])


def dumps_trt(table: CalibrationTable, header: str = DEFAULT_TRT_HEADER) -> str:
    lines = [check_header(header)]
    for name, e in exported_entries(table, FORMAT).items():
        lines.append(f"{name}{SEPARATOR}{scale_hex(int8_scale(e))}")
    return "\n".join(lines) + "\n"


def write_trt_cache(table: CalibrationTable, path: str | Path, header: str = DEFAULT_TRT_HEADER) -> None:
    write_bytes(path, dumps_trt(table, header).encode("utf-8"))


def loads_trt(data: str | bytes) -> CalibrationTable:
    lines = split_lines(decode_text(data, FORMAT))
    if not lines:
        raise QuantvizError(
            "The TensorRT calibration cache is empty: line 1 should be a header like TRT-8601-EntropyCalibration2."
        )
    header = lines[0].strip()
    if not HEADER_PATTERN.fullmatch(header):
        raise QuantvizError(
            f"Line 1 of the TensorRT calibration cache should be a header like {DEFAULT_TRT_HEADER}, not {lines[0][:80]!r}."
        )
    tensors: dict[str, TensorEntry] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(SEPARATOR)
        if not sep:
            raise QuantvizError(
                f"Line {number} of the TensorRT calibration cache should be '<tensor name>: <hex scale>', not {line[:80]!r}."
            )
        value = value.strip()
        if not HEX_PATTERN.fullmatch(value):
            raise QuantvizError(
                f"Line {number} of the TensorRT calibration cache: {value[:20]!r} is not a float32 bit pattern in hex (up to 8 hex digits)."
            )
        scale = hex_scale(value)
        if not math.isfinite(scale) or scale < 0:
            raise QuantvizError(
                f"Line {number} of the TensorRT calibration cache: the scale {scale!r} of '{name}' is not a finite positive number."
            )
        if name in tensors:
            raise QuantvizError(f"Line {number} of the TensorRT calibration cache repeats the tensor '{name}'.")
        tensors[name] = symmetric_entry(METHOD, threshold_from_scale(scale), scale=scale)
    version, algorithm = HEADER_PATTERN.fullmatch(header).groups()  # type: ignore[union-attr]
    return imported_table(tensors, "trt", {"trt_header": header, "trt_version": version, "trt_algorithm": algorithm})


def read_trt_cache(path: str | Path) -> CalibrationTable:
    return loads_trt(read_bytes(path))


TRT_LINE = re.compile(r".*: [0-9A-Fa-f]{1,8}")


FORMATS = (
    TableFormat(
        "trt",
        lambda table, o: dumps_trt(table, o.trt_header or DEFAULT_TRT_HEADER).encode("utf-8"),
        lambda data, _o: loads_trt(data),
        "calibration.cache",
        "TensorRT calibration cache: header TRT-<version>-<algorithm>, hex float32 scale T/127 per tensor",
        detect=(
            (1, lambda s: HEADER_PATTERN.fullmatch(s.first) is not None),
            # a malformed or missing header: the TensorRT reader then says what is wrong
            (4, lambda s: s.first.startswith("TRT-") or TRT_LINE.fullmatch(s.first) is not None),
        ),
    ),
)
