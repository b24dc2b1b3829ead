"""Every table format by name: how to write it, how to read it, its usual file name, what it is for.

The CLI (`export`, `import`, `diff`) and the app's download buttons go through this registry only;
adding a format is one module in quantviz/export/ plus one entry in FORMATS. detect_format tells a
file's format from its content first (TensorRT header line, JSON keys, flatbuffers structure, ONNX
protobuf, CSV header) and from its name only where content is ambiguous (ncnn vs onnxruntime cache:
both are "<name> <value>" lines; ncnn2table ends every line with a space, which decides first).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from quantviz.config import TABLE_FORMAT
from quantviz.errors import QuantvizError
from quantviz.export import csv_format, ncnn, ort_tables, qdq_model, qv_json, tensorrt
from quantviz.export.common import decode_text, read_bytes, split_lines
from quantviz.model import LoadedModel
from quantviz.safeio import check_output, load_json, write_bytes
from quantviz.schema import check_table
from quantviz.table import CalibrationTable


@dataclass(frozen=True)
class ExportOptions:
    """What some formats need besides the table: the model (ncnn layer names, QDQ) and the TensorRT
    cache header (its version and algorithm must match the TensorRT that reads it)."""

    model: LoadedModel | None = None
    trt_header: str = tensorrt.DEFAULT_TRT_HEADER
    reduce_range: bool = False  # QDQ model: 7-bit weights (quantviz.qdq, for x86 CPUs without VNNI)


Writer = Callable[[CalibrationTable, ExportOptions], bytes]
Reader = Callable[[bytes, ExportOptions], CalibrationTable]


@dataclass(frozen=True)
class TableFormat:
    name: str
    writer: Writer
    reader: Reader
    default_name: str  # file name to use when the user gives a directory (or for a download)
    description: str
    binary: bool = False
    mime: str = "text/plain"


def _text(fn: Callable[[CalibrationTable], str]) -> Writer:
    return lambda table, _opts: fn(table).encode("utf-8")


FORMATS: dict[str, TableFormat] = {
    f.name: f
    for f in (
        TableFormat(
            "json",
            _text(qv_json.dumps),
            lambda data, _o: qv_json.loads(decode_text(data, "quantviz JSON table")),
            "calibration_table.json",
            "quantviz JSON: lossless (methods, thresholds, scales, weight scales, notes, settings, model hash)",
            mime="application/json",
        ),
        TableFormat(
            "csv",
            _text(csv_format.dumps_csv),
            lambda data, _o: csv_format.loads_csv(data),
            "calibration_table.csv",
            "CSV: one row per tensor, for spreadsheets",
            mime="text/csv",
        ),
        TableFormat(
            "trt",
            lambda table, o: tensorrt.dumps_trt(table, o.trt_header).encode("utf-8"),
            lambda data, _o: tensorrt.loads_trt(data),
            "calibration.cache",
            "TensorRT calibration cache: header TRT-<version>-<algorithm>, hex float32 scale T/127 per tensor",
        ),
        TableFormat(
            "ort-json",
            lambda table, _o: ort_tables.ort_table_bytes(table, "json"),
            lambda data, _o: ort_tables.loads_ort_json(data),
            "calibration.json",
            "onnxruntime calibration.json (TensorRT execution provider), written by onnxruntime's own writer",
            mime="application/json",
        ),
        TableFormat(
            "ort-flatbuffers",
            lambda table, _o: ort_tables.ort_table_bytes(table, "flatbuffers"),
            lambda data, _o: ort_tables.loads_ort_flatbuffers(data),
            "calibration.flatbuffers",
            "onnxruntime calibration.flatbuffers (TensorRT execution provider)",
            binary=True,
            mime="application/octet-stream",
        ),
        TableFormat(
            "ort-cache",
            lambda table, _o: ort_tables.ort_table_bytes(table, "cache"),
            lambda data, _o: ort_tables.loads_ort_cache(data),
            "calibration.cache",
            "onnxruntime calibration.cache: '<name> <dynamic range>' lines",
        ),
        TableFormat(
            "ncnn",
            lambda table, o: ncnn.dumps_ncnn(table, o.model).encode("utf-8"),
            lambda data, o: ncnn.loads_ncnn(data, o.model),
            "model.table",
            "ncnn int8 table (ncnn2table / ncnn2int8): scale 127/T per layer input, per-channel weight lines",
        ),
        TableFormat(
            "qdq",
            lambda table, o: qdq_model.qdq_model_bytes(table, o.model, o.reduce_range),
            lambda data, _o: qdq_model.loads_qdq(data),
            "model_qdq.onnx",
            "quantized ONNX model with QuantizeLinear/DequantizeLinear carrying the table's scales",
            binary=True,
            mime="application/octet-stream",
        ),
    )
}


def table_format(name: str) -> TableFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise QuantvizError(f"Unknown table format '{name}': use one of {', '.join(FORMATS)}.") from None


def export_bytes(table: CalibrationTable, fmt: str, options: ExportOptions | None = None) -> bytes:
    """The table in a format; checked first (quantviz.schema), so what is exported reads back."""
    f = table_format(fmt)
    check_table(table, "The table to export")
    return f.writer(table, options or ExportOptions())


def write_table(table: CalibrationTable, fmt: str, path: str | Path, options: ExportOptions | None = None) -> Path:
    """Write the table in a format; a directory as path gets the format's default file name. Returns the path."""
    f = table_format(fmt)
    out = Path(path)
    if str(path).endswith("/") and not out.is_dir():
        raise QuantvizError(f"The output folder '{path}' does not exist: create it or give a file name.")
    if out.is_dir():
        out = out / f.default_name
    check_output(out, "output file (-o)")
    return write_bytes(out, export_bytes(table, fmt, options), "output file (-o)")


def _with_model(table: CalibrationTable, model: LoadedModel | None) -> CalibrationTable:
    if model is None or table.model_sha256:
        return table
    return replace(table, model_name=model.name, model_sha256=model.sha256)


def import_bytes(
    data: bytes, fmt: str | None = None, options: ExportOptions | None = None, filename: str | None = None
) -> CalibrationTable:
    """Read a table in any supported format (detected when fmt is None) as a CalibrationTable."""
    opts = options or ExportOptions()
    name = fmt or detect_format(data, filename)
    table = table_format(name).reader(data, opts)
    if name == "qdq" and filename and not table.model_name:
        table = replace(table, model_name=Path(filename).name)
    return _with_model(table, opts.model)


def read_table(path: str | Path, fmt: str | None = None, options: ExportOptions | None = None) -> CalibrationTable:
    p = Path(path)
    return import_bytes(read_bytes(p), fmt, options, filename=p.name)


# --- detection ---------------------------------------------------------------------------------

TRT_LINE = re.compile(r".*: [0-9A-Fa-f]{1,8}")
NCNN_PARAM = re.compile(r"\S+_param_\d+\s")
NCNN_SUFFIXES = (".table", ".ncnn")


def _binary_format(data: bytes, filename: str) -> str | None:
    if filename.endswith(".onnx"):
        return "qdq"
    if filename.endswith((".flatbuffers", ".fb")):
        return "ort-flatbuffers"
    try:
        ort_tables.loads_ort_flatbuffers(data)
        return "ort-flatbuffers"
    except QuantvizError:
        pass
    try:
        qdq_model.loads_qdq(data)
        return "qdq"
    except QuantvizError:
        return None


def _line_format(lines: list[str], filename: str) -> str | None:
    body = [line for line in lines if line.strip()]
    if not body:
        return None
    if any(line.startswith("#") or line.endswith(" ") or NCNN_PARAM.match(line + " ") for line in body):
        return "ncnn"
    if all(len(line.rsplit(" ", 1)) == 2 for line in body):
        return "ncnn" if filename.endswith(NCNN_SUFFIXES) else "ort-cache"
    return None


def detect_format(data: bytes | str | Path, filename: str | None = None) -> str:
    """The name of a table's format, from its content (and its file name where content is ambiguous).

    data: the file's bytes, or a path to read."""
    if isinstance(data, str | Path):
        filename = filename or Path(data).name
        data = read_bytes(data)
    fname = (filename or "").lower()
    label = filename or "the file"
    try:
        text = decode_text(data, "table") if b"\x00" not in data else None
    except QuantvizError:
        text = None
    if text is None:
        found = _binary_format(data, fname)
        if found:
            return found
        raise QuantvizError(
            f"Cannot tell the format of {label}: it is binary but neither an onnxruntime calibration.flatbuffers nor an ONNX model."
        )
    lines = split_lines(text)
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first:
        raise QuantvizError(f"{label} is empty: there is no table to read.")
    if tensorrt.HEADER_PATTERN.fullmatch(first):
        return "trt"
    if first.startswith(("{", "[")):
        doc = load_json(text, label[:1].upper() + label[1:])
        return "json" if isinstance(doc, dict) and doc.get("format") == TABLE_FORMAT else "ort-json"
    try:
        header = next(csv.reader(io.StringIO(first)))
    except (csv.Error, StopIteration):
        header = []
    if "name" in (h.strip() for h in header) and "threshold" in (h.strip() for h in header):
        return "csv"
    if first.startswith("TRT-") or TRT_LINE.fullmatch(first):
        return "trt"  # a malformed or missing header: let the TensorRT reader say what is wrong
    if fname.endswith(".csv"):
        return "csv"
    found = _line_format(lines, fname)
    if found:
        return found
    raise QuantvizError(f"Cannot tell the format of {label}: give it with --format ({', '.join(FORMATS)}).")
