"""Every table format by name: the registry lists the formats, each declared once in its own module.

The CLI (`export`, `import`, `diff`) and the app's download buttons go through this registry only;
adding a format is one module in quantviz/export/ ending with its TableFormat (quantviz.export.format:
writer, reader, file name, whether it needs the model, how to recognise it) plus its name in FORMATS.
detect_format tells a file's format from its content first (TensorRT header line, JSON keys,
flatbuffers structure, ONNX protobuf, CSV header) and from its name only where content is ambiguous
(ncnn vs onnxruntime cache: both are "<name> <value>" lines; ncnn2table ends every line with a space,
which decides first).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from quantviz.errors import QuantvizError
from quantviz.export import csv_format, ncnn, ort_tables, qdq_model, qv_json, tensorrt
from quantviz.export.common import read_bytes
from quantviz.export.format import ExportOptions, Sniff, TableFormat
from quantviz.model import LoadedModel
from quantviz.safeio import check_output, write_bytes
from quantviz.schema import check_table
from quantviz.table import CalibrationTable

__all__ = ["FORMATS", "ExportOptions", "TableFormat", "detect_format", "export_bytes", "import_bytes", "read_table", "table_format", "write_table"]

FORMATS: dict[str, TableFormat] = {
    f.name: f for module in (qv_json, csv_format, tensorrt, ort_tables, ncnn, qdq_model) for f in module.FORMATS
}
DETECTION = sorted(
    ((tier, order, f.name, test) for order, f in enumerate(FORMATS.values()) for tier, test in f.detect),
    key=lambda d: (d[0], d[1]),
)


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


def detect_format(data: bytes | str | Path, filename: str | None = None) -> str:
    """The name of a table's format, from its content (and its file name where content is ambiguous).

    data: the file's bytes, or a path to read. Each format's tests (TableFormat.detect) are tried
    tier by tier (quantviz.export.format)."""
    if isinstance(data, str | Path):
        filename = filename or Path(data).name
        data = read_bytes(data)
    sniff = Sniff(data, filename)
    if not sniff.binary and not sniff.first:
        raise QuantvizError(f"{sniff.label} is empty: there is no table to read.")
    for _tier, _order, name, test in DETECTION:
        if test(sniff):
            return name
    if sniff.binary:
        raise QuantvizError(
            f"Cannot tell the format of {sniff.label}: it is binary but neither an onnxruntime calibration.flatbuffers nor an ONNX model."
        )
    raise QuantvizError(f"Cannot tell the format of {sniff.label}: give it with --format ({', '.join(FORMATS)}).")
