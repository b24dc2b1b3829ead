"""The `export`, `import` and `diff` commands (../shared/design/CLI.md); quantviz/cli.py registers them.

    python -m quantviz export TABLE.json --format F [--model MODEL] [--trt-header H] -o OUT
    python -m quantviz import FILE [--model MODEL] [--format F] -o TABLE.json
    python -m quantviz diff A B [--model MODEL] [-o DIFF.csv]

TABLE (export) and A, B (diff) may be in any supported format; it is detected from the content.
Messages go to stderr, the diff table to stdout when there is no -o. Bad input raises QuantvizError,
which quantviz/cli.py turns into one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from quantviz.errors import QuantvizError
from quantviz.export import qv_json
from quantviz.export.diff import diff_tables, format_diff, summary, write_diff_csv
from quantviz.export.registry import FORMATS, ExportOptions, read_table, table_format, write_table
from quantviz.export.tensorrt import DEFAULT_TRT_HEADER, check_header
from quantviz.model import LoadedModel

DIFF_ROWS_SHOWN = 40  # rows printed to the terminal; -o writes them all


def _model(path: str | None) -> LoadedModel | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise QuantvizError(f"The model '{path}' does not exist.")
    from quantviz.cli import load_checked  # the pre-flight's blocking findings stop an export too

    return load_checked(path)


def cmd_export(args: argparse.Namespace) -> int:
    model = _model(args.model)
    header = check_header(args.trt_header)
    table = read_table(args.table, options=ExportOptions(model=model))
    if model is not None and table.model_sha256 and table.model_sha256 != model.sha256:
        print(
            f"warning: the table was computed on a different model ({table.model_name or 'unknown'}) than {model.name}.",
            file=sys.stderr,
        )
    if model is None and table_format(args.format).needs_model(table):
        raise QuantvizError(f"--format {args.format} needs the model: add --model MODEL.onnx.")
    if args.reduce_range and args.format != "qdq":
        raise QuantvizError("--reduce-range applies to --format qdq only (7-bit weights in the QDQ model).")
    opts = ExportOptions(model=model, trt_header=header, reduce_range=args.reduce_range)
    out = write_table(table, args.format, args.output, opts)
    kept = sum(e.float_kept for e in table.tensors.values())
    note = f" ({kept} kept in float)" if kept else ""
    print(f"{len(table.tensors)} tensors{note} -> {out} ({args.format})", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    model = _model(args.model)
    table = read_table(args.file, fmt=args.format, options=ExportOptions(model=model))
    qv_json.write_json(table, args.output)
    fmt = table.settings.get("source_format", args.format or "json")
    print(f"{len(table.tensors)} tensors read ({fmt}) -> {args.output}", file=sys.stderr)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    opts = ExportOptions(model=_model(args.model))
    rows = diff_tables(read_table(args.a, options=opts), read_table(args.b, options=opts))
    if args.output:
        write_diff_csv(rows, args.output)
        print(f"{len(rows)} rows -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(format_diff(rows, limit=None if args.all else DIFF_ROWS_SHOWN))
    print(summary(rows), file=sys.stderr)
    return 0


def add_table_commands(
    sub: argparse._SubParsersAction[Any], commands: MutableMapping[str, Callable[[argparse.Namespace], int]]
) -> None:
    """Add export / import / diff to the `python -m quantviz` sub-command parser."""
    names = ", ".join(FORMATS)
    p = sub.add_parser("export", help="write a calibration table in another format")
    p.add_argument("table", help="the table (quantviz JSON, or any supported format)")
    p.add_argument("--format", required=True, choices=list(FORMATS), help=names)
    p.add_argument("--model", help="the ONNX model (needed by ncnn and qdq)")
    p.add_argument("--trt-header", default=DEFAULT_TRT_HEADER, help=f"TensorRT cache header (default {DEFAULT_TRT_HEADER})")
    p.add_argument(
        "--reduce-range",
        action="store_true",
        help="qdq: 7-bit weights, for onnxruntime on x86 CPUs with AVX2 and no VNNI (its int8 kernels saturate there)",
    )
    p.add_argument("-o", "--output", required=True, help="output file (a folder gets the format's usual file name)")
    commands["export"] = cmd_export

    p = sub.add_parser("import", help="read a table in any supported format into quantviz JSON")
    p.add_argument("file")
    p.add_argument("--model", help="the ONNX model (maps ncnn layer names to tensors; records the model hash)")
    p.add_argument("--format", choices=list(FORMATS), help="the file's format (default: detected)")
    p.add_argument("-o", "--output", required=True, help="table (.json)")
    commands["import"] = cmd_import

    p = sub.add_parser("diff", help="compare two tables tensor by tensor")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--model", help="the ONNX model (for ncnn tables, keyed by layer)")
    p.add_argument("--all", action="store_true", help=f"print every row (default: the first {DIFF_ROWS_SHOWN})")
    p.add_argument("-o", "--output", help="write the comparison as CSV instead of printing it")
    commands["diff"] = cmd_diff
