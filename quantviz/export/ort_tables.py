"""onnxruntime calibration tables: calibration.json, calibration.flatbuffers, calibration.cache.

Written by onnxruntime's own writer, onnxruntime.quantization.quant_utils.write_calibration_table,
which always writes the three files into one directory; they are read by onnxruntime's TensorRT
execution provider (flatbuffers and cache hold the dynamic range max(highest, lowest) as text).

What quantviz hands the writer: a TensorsData of TensorData(lowest=-T, highest=T) (float32) for every
tensor not kept in float. TensorRT is int8 symmetric, so an asymmetric entry is written as its
symmetric cover T = max(|min|, |max|); its uint8 [min, max] is not kept (quantviz JSON keeps it).

Readers:
- json: the current serialisation ({"CLS": "TensorsData", "data": {name: {"lowest": ..., "highest":
  ...}}}, numbers either plain or {"CLS": "numpy.array", "data": ...}), a bare {name: TensorData dict},
  and the older {name: [min, max]};
- flatbuffers: onnxruntime's generated CalTableFlatBuffers module (TrtTable of KeyValue strings);
- cache: ``<name> <value>`` lines, split on the LAST space (names may hold spaces).
A stored [lo, hi] with lo = -hi reads as symmetric int8 T = hi; any other range as uint8 [lo, hi];
a single dynamic range v reads as T = |v|.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quantviz.errors import QuantvizError
from quantviz.export.common import (
    decode_text,
    exported_entries,
    imported_table,
    parse_float,
    range_entry,
    read_bytes,
    split_lines,
    symmetric_entry,
)
from quantviz.export.format import Sniff, TableFormat, name_value_lines, ncnn_lines
from quantviz.safeio import load_json
from quantviz.table import CalibrationTable, TensorEntry

FORMAT = "onnxruntime calibration table"
KINDS = ("json", "flatbuffers", "cache")
FILE_NAMES = {"json": "calibration.json", "flatbuffers": "calibration.flatbuffers", "cache": "calibration.cache"}
METHODS = {"json": "ort-json", "flatbuffers": "ort-flatbuffers", "cache": "ort-cache"}
FLATBUFFER_MIN_BYTES = 8  # root offset + vtable offset


def _check_kind(kind: str) -> str:
    if kind not in FILE_NAMES:
        raise QuantvizError(f"The onnxruntime table kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    return kind


def tensors_data(table: CalibrationTable) -> Any:
    """The onnxruntime TensorsData write_calibration_table takes: TensorData(lowest=-T, highest=T)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    data = {}
    for name, e in exported_entries(table, FORMAT).items():
        t = np.float32(e.threshold)
        data[name] = TensorData(lowest=np.float32(-t), highest=t)
    # The ranges are final whatever method chose them; MinMax is the method that stores plain ranges.
    return TensorsData(CalibrationMethod.MinMax, data)


def write_ort_tables(table: CalibrationTable, directory: str | Path) -> dict[str, Path]:
    """Write calibration.json, calibration.flatbuffers and calibration.cache into an existing directory
    with onnxruntime's own writer; returns kind -> path."""
    from onnxruntime.quantization.quant_utils import write_calibration_table

    d = Path(directory)
    if not d.is_dir():
        raise QuantvizError(f"The directory '{d}' does not exist: create it first.")
    write_calibration_table(tensors_data(table), dir=str(d))
    return {kind: d / name for kind, name in FILE_NAMES.items()}


def ort_table_bytes(table: CalibrationTable, kind: str) -> bytes:
    """One of the three files as bytes (written in a private temporary directory, then read)."""
    _check_kind(kind)
    with tempfile.TemporaryDirectory(prefix="quantviz-ort-") as tmp:
        paths = write_ort_tables(table, tmp)
        return paths[kind].read_bytes()


def write_ort_table(table: CalibrationTable, path: str | Path, kind: str) -> None:
    """Write only the file of the given kind at path (the other two are discarded)."""
    _check_kind(kind)
    with tempfile.TemporaryDirectory(prefix="quantviz-ort-") as tmp:
        paths = write_ort_tables(table, tmp)
        shutil.copyfile(paths[kind], path)


# --- readers -----------------------------------------------------------------------------------


def _json_number(value: Any, where: str) -> float:
    """A float from a plain number or onnxruntime's {"CLS": "numpy.array", "data": ...} encoding."""
    if isinstance(value, dict) and "data" in value:
        data = value["data"]
        flat = np.asarray(data, dtype=object).ravel().tolist() if isinstance(data, list) else [data]
        if len(flat) != 1:
            raise QuantvizError(f"{where} holds {len(flat)} values (a per-channel range); quantviz reads one range per tensor.")
        value = flat[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuantvizError(f"{where} must be a number, not {json.dumps(value)[:40]}.")
    return float(value)


def _json_range(name: str, value: Any) -> tuple[float, float]:
    where = f'calibration.json, tensor "{name}"'
    if isinstance(value, list):
        if len(value) != 2:
            raise QuantvizError(f"{where} should be [min, max], not a list of {len(value)} values.")
        return _json_number(value[0], f"{where}, min"), _json_number(value[1], f"{where}, max")
    if isinstance(value, dict):
        for key in ("lowest", "highest"):
            if key not in value:
                raise QuantvizError(f'{where} has no "{key}" field.')
        return _json_number(value["lowest"], f"{where}, lowest"), _json_number(value["highest"], f"{where}, highest")
    raise QuantvizError(f'{where} should be an object with "lowest" and "highest" or a [min, max] list.')


def _entry_from_range(method: str, name: str, lo: float, hi: float) -> TensorEntry:
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise QuantvizError(f"Tensor '{name}' has the range [{lo!r}, {hi!r}], which is not a finite [min, max].")
    return range_entry(method, lo, hi)


def loads_ort_json(data: str | bytes) -> CalibrationTable:
    doc = load_json(decode_text(data, "onnxruntime calibration.json"), "calibration.json")
    if not isinstance(doc, dict):
        raise QuantvizError("calibration.json should hold an object of tensor ranges.")
    settings: dict[str, Any] = {}
    if doc.get("CLS") == "TensorsData":
        raw = doc.get("data")
        if not isinstance(raw, dict):
            raise QuantvizError('calibration.json has "CLS": "TensorsData" but no "data" object.')
        method = doc.get("calibration_method")
        if isinstance(method, dict):
            method = method.get("value")
        if method is not None:
            settings["ort_calibration_method"] = str(method)
    else:
        raw = doc
    tensors = {name: _entry_from_range(METHODS["json"], name, *_json_range(name, value)) for name, value in raw.items()}
    return imported_table(tensors, "ort-json", settings)


def _range_value(text: str, where: str, name: str, method: str) -> TensorEntry:
    v = parse_float(text.strip(), where)
    if not math.isfinite(v):
        raise QuantvizError(f"{where}: the dynamic range of '{name}' is {v!r}, not a finite number.")
    return symmetric_entry(method, abs(v))


def loads_ort_cache(data: str | bytes) -> CalibrationTable:
    tensors: dict[str, TensorEntry] = {}
    for number, line in enumerate(split_lines(decode_text(data, "onnxruntime calibration.cache")), start=1):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(" ")
        where = f"Line {number} of calibration.cache"
        if not sep or not value:
            raise QuantvizError(f"{where} should be '<tensor name> <dynamic range>', not {line[:80]!r}.")
        if name in tensors:
            raise QuantvizError(f"{where} repeats the tensor '{name}'.")
        tensors[name] = _range_value(value, where, name, METHODS["cache"])
    return imported_table(tensors, "ort-cache")


def loads_ort_flatbuffers(data: bytes) -> CalibrationTable:
    """Read with onnxruntime's generated flatbuffers classes (there is no verifier: bounds are checked here)."""
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    buf = bytes(data)
    if len(buf) < FLATBUFFER_MIN_BYTES:
        raise QuantvizError(f"calibration.flatbuffers is {len(buf)} bytes long, too short to hold a table.")
    tensors: dict[str, TensorEntry] = {}
    index = -1
    try:
        table = TrtTable.GetRootAs(bytearray(buf), 0)
        count = table.DictLength()
        if count * 4 > len(buf):
            raise QuantvizError(f"calibration.flatbuffers claims {count} entries, more than its {len(buf)} bytes can hold.")
        for index in range(count):
            kv = table.Dict(index)
            key, value = kv.Key(), kv.Value()
            if key is None or value is None:
                raise QuantvizError(f"calibration.flatbuffers entry {index} has no {'key' if key is None else 'value'}.")
            name = key.decode("utf-8")
            where = f"calibration.flatbuffers entry {index} ('{name}')"
            if name in tensors:
                raise QuantvizError(f"{where} repeats the tensor '{name}'.")
            tensors[name] = _range_value(value.decode("utf-8"), where, name, METHODS["flatbuffers"])
    except (IndexError, struct.error, UnicodeDecodeError, TypeError, OverflowError, MemoryError):
        where = "its root table" if index < 0 else f"entry {index}"
        raise QuantvizError(
            f"calibration.flatbuffers is not a valid onnxruntime calibration table (cannot read {where})."
        ) from None
    return imported_table(tensors, "ort-flatbuffers")


LOADERS = {"json": loads_ort_json, "flatbuffers": loads_ort_flatbuffers, "cache": loads_ort_cache}


def loads_ort_table(data: bytes | str, kind: str) -> CalibrationTable:
    _check_kind(kind)
    if kind == "flatbuffers":
        if isinstance(data, str):
            raise QuantvizError("calibration.flatbuffers is binary: pass its bytes, not text.")
        return loads_ort_flatbuffers(data)
    return loads_ort_json(data) if kind == "json" else loads_ort_cache(data)


def read_ort_table(path: str | Path, kind: str) -> CalibrationTable:
    return loads_ort_table(read_bytes(path), kind)


def read_ort_directory(directory: str | Path) -> Mapping[str, CalibrationTable]:
    """Every calibration.* file present in a directory, kind -> table."""
    d = Path(directory)
    return {kind: read_ort_table(d / name, kind) for kind, name in FILE_NAMES.items() if (d / name).is_file()}


def _flatbuffers_parse(s: Sniff) -> bool:
    if not s.binary:
        return False
    try:
        loads_ort_flatbuffers(s.data)
    except QuantvizError:
        return False
    return True


FORMATS = (
    TableFormat(
        "ort-json",
        lambda table, _o: ort_table_bytes(table, "json"),
        lambda data, _o: loads_ort_json(data),
        "calibration.json",
        "onnxruntime calibration.json (TensorRT execution provider), written by onnxruntime's own writer",
        mime="application/json",
        detect=((2, lambda s: s.looks_json),),  # after quantviz's own JSON (same tier, listed first)
    ),
    TableFormat(
        "ort-flatbuffers",
        lambda table, _o: ort_table_bytes(table, "flatbuffers"),
        lambda data, _o: loads_ort_flatbuffers(data),
        "calibration.flatbuffers",
        "onnxruntime calibration.flatbuffers (TensorRT execution provider)",
        binary=True,
        mime="application/octet-stream",
        detect=((1, lambda s: s.binary and s.filename.endswith((".flatbuffers", ".fb"))), (2, _flatbuffers_parse)),
    ),
    TableFormat(
        "ort-cache",
        lambda table, _o: ort_table_bytes(table, "cache"),
        lambda data, _o: loads_ort_cache(data),
        "calibration.cache",
        "onnxruntime calibration.cache: '<name> <dynamic range>' lines",
        detect=((6, lambda s: name_value_lines(s) and not ncnn_lines(s)),),
    ),
)
