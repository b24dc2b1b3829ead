"""What a table format declares about itself (quantviz/export/registry.py only lists them).

Each format module ends with its TableFormat: how to write and read it, its usual file name, whether
it needs the model, and how to recognise a file of it. Recognition goes by tiers: the registry tries
every format's tier-1 test first (content that can only be that format), then tier 2, and so on, in
the registry's order within a tier; the first test that passes names the format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from quantviz.errors import QuantvizError
from quantviz.export.common import decode_text, split_lines
from quantviz.model import LoadedModel
from quantviz.safeio import load_json
from quantviz.table import CalibrationTable


@dataclass(frozen=True)
class ExportOptions:
    """What some formats need besides the table: the model (ncnn layer names, QDQ) and the TensorRT
    cache header (its version and algorithm must match the TensorRT that reads it; None: TensorRT's
    default, quantviz.export.tensorrt.DEFAULT_TRT_HEADER)."""

    model: LoadedModel | None = None
    trt_header: str | None = None
    reduce_range: bool = False  # QDQ model: 7-bit weights (quantviz.qdq, for x86 CPUs without VNNI)


class Sniff:
    """A file being recognised: its bytes, its text (None when binary), lines, first line, lower-case name."""

    def __init__(self, data: bytes, filename: str | None) -> None:
        self.data = data
        self.filename = (filename or "").lower()
        self.label = filename or "the file"
        try:
            self.text = decode_text(data, "table") if b"\x00" not in data else None
        except QuantvizError:
            self.text = None
        self.lines = split_lines(self.text) if self.text is not None else []
        self.first = next((line.strip() for line in self.lines if line.strip()), "")

    @property
    def binary(self) -> bool:
        return self.text is None

    @cached_property
    def json_doc(self) -> Any:
        """The parsed JSON of a text starting with { or [ (quantviz.safeio: bounded, a clear error when it does not parse)."""
        return load_json(self.text or "", self.label[:1].upper() + self.label[1:])

    @property
    def looks_json(self) -> bool:
        return self.text is not None and self.first.startswith(("{", "["))


Writer = Callable[[CalibrationTable, ExportOptions], bytes]
Reader = Callable[[bytes, ExportOptions], CalibrationTable]
Test = Callable[[Sniff], bool]


def _never(_table: CalibrationTable) -> bool:
    return False


@dataclass(frozen=True)
class TableFormat:
    name: str
    writer: Writer
    reader: Reader
    default_name: str  # file name to use when the user gives a directory (or for a download)
    description: str
    binary: bool = False
    mime: str = "text/plain"
    detect: tuple[tuple[int, Test], ...] = ()  # (tier, test): see the module doc
    needs_model: Callable[[CalibrationTable], bool] = field(default=_never)  # writing this table needs the model


def text_writer(fn: Callable[[CalibrationTable], str]) -> Writer:
    return lambda table, _opts: fn(table).encode("utf-8")


NCNN_PARAM = re.compile(r"\S+_param_\d+\s")
NCNN_SUFFIXES = (".table", ".ncnn")


def _body(s: Sniff) -> list[str]:
    return [line for line in s.lines if line.strip()]


def name_value_lines(s: Sniff) -> bool:
    """Every line is "<name> <value>" (ncnn tables and onnxruntime's calibration.cache alike)."""
    body = _body(s)
    return bool(body) and all(len(line.rsplit(" ", 1)) == 2 for line in body)


def ncnn_lines(s: Sniff) -> bool:
    """ncnn2table's marks (a comment, a line ending with a space, a "<layer>_param_<i> " key), or
    "<name> <value>" lines in a file named like an ncnn table."""
    body = _body(s)
    if any(line.startswith("#") or line.endswith(" ") or NCNN_PARAM.match(line + " ") for line in body):
        return True
    return name_value_lines(s) and s.filename.endswith(NCNN_SUFFIXES)
