"""quantviz JSON: the project's own lossless table format (FORMATS.md).

Floats are written with Python's repr (shortest text that reads back to the same double), so a
write/read round trip is bit-exact. The keys tensors -> name -> method/min/max/threshold/scale are a
contract other tools read: never rename them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from quantviz.config import TABLE_FORMAT, TABLE_VERSION
from quantviz.errors import QuantvizError
from quantviz.export.common import decode_text
from quantviz.export.format import Sniff, TableFormat, text_writer
from quantviz.limits import JSON_BYTES
from quantviz.safeio import load_json, read_input_bytes, write_text
from quantviz.schema import check_table
from quantviz.table import CalibrationTable, TensorEntry

_REQUIRED = ("method", "min", "max", "threshold", "scale")


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    if math.isfinite(v):
        return float(v)
    return str(v)  # "nan" / "inf": JSON has no literal for them


def _plain(value: Any) -> Any:
    """JSON-ready copy of nested settings/weights/extra: numpy arrays and scalars become Python
    values, non-finite floats their text ("nan", "inf"), since JSON has no literal for them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy array or scalar
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def table_to_dict(table: CalibrationTable) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    for name, e in table.tensors.items():
        d: dict[str, Any] = {
            "method": e.method,
            "min": _num(e.min),
            "max": _num(e.max),
            "threshold": _num(e.threshold),
            "scale": _num(e.scale),
            "zero_point": int(e.zero_point),
        }
        if e.cosine is not None:
            d["cosine"] = _num(e.cosine)
        if e.note:
            d["note"] = e.note
        if e.float_kept:
            d["float"] = True
        if e.shared_with:
            d["shared_with"] = list(e.shared_with)
        if e.extra_fields():
            d["extra"] = _plain(e.extra_fields())
        tensors[name] = d
    out: dict[str, Any] = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "model": {"name": table.model_name, "sha256": table.model_sha256},
        "settings": _plain(table.settings),
        "tensors": tensors,
        "weights": _plain(table.weights),
        "requant": _plain(table.requant),
    }
    if table.skipped:
        out["skipped"] = _plain(table.skipped)
    return out


def dumps(table: CalibrationTable) -> str:
    """The table as quantviz JSON, checked first (quantviz.schema): what is written reads back."""
    check_table(table, "The table to write")
    return json.dumps(table_to_dict(table), indent=1, allow_nan=False)


def write_json(table: CalibrationTable, path: str | Path) -> None:
    write_text(path, dumps(table), "table file")


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise QuantvizError(f"{where} must be a number, not {json.dumps(value)}.")
    try:
        return float(value)
    except (ValueError, OverflowError):
        raise QuantvizError(f"{where} must be a number, not {json.dumps(value)}.") from None


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float) and not value.is_integer()):
        raise QuantvizError(f"{where} must be an integer, not {json.dumps(value)[:40]}.")
    return int(value)


def table_from_dict(doc: Any) -> CalibrationTable:
    if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
        raise QuantvizError('This JSON is not a quantviz calibration table (its "format" is not quantviz-calibration).')
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise QuantvizError(f'The table\'s "version" must be an integer, not {json.dumps(version)}.')
    if version > TABLE_VERSION:
        raise QuantvizError(
            f"This table has version {doc['version']}; this quantviz reads up to {TABLE_VERSION}: upgrade quantviz."
        )
    raw = doc.get("tensors")
    if not isinstance(raw, dict):
        raise QuantvizError('The table has no "tensors" object.')
    tensors: dict[str, TensorEntry] = {}
    for name, d in raw.items():
        if not isinstance(d, dict):
            raise QuantvizError(f'tensors["{name}"] must be an object.')
        for key in _REQUIRED:
            if key not in d:
                raise QuantvizError(f'tensors["{name}"] has no "{key}" field.')
        cos = d.get("cosine")
        where = f'tensors["{name}"]'
        if not isinstance(d["method"], str):
            raise QuantvizError(f"{where}.method must be a string, not {json.dumps(d['method'])}.")
        shared = d.get("shared_with", [])
        if not isinstance(shared, list) or not all(isinstance(v, str) for v in shared):
            raise QuantvizError(f"{where}.shared_with must be a list of tensor names.")
        extra = d.get("extra", {})
        if not isinstance(extra, dict):
            raise QuantvizError(f"{where}.extra must be an object.")
        tensors[name] = TensorEntry(
            method=d["method"],
            min=_float(d["min"], f'tensors["{name}"].min'),
            max=_float(d["max"], f'tensors["{name}"].max'),
            threshold=_float(d["threshold"], f'tensors["{name}"].threshold'),
            scale=_float(d["scale"], f'tensors["{name}"].scale'),
            zero_point=_int(d.get("zero_point", 0), f"{where}.zero_point"),
            cosine=None if cos is None else _float(cos, f'tensors["{name}"].cosine'),
            note=str(d.get("note", "")),
            float_kept=bool(d.get("float", False)),
            shared_with=tuple(shared),
            extra=dict(extra),
        )
    model = doc.get("model", {}) or {}
    if not isinstance(model, dict):
        raise QuantvizError('The table\'s "model" must be an object with "name" and "sha256".')
    for key in ("settings", "weights", "requant", "skipped"):
        if not isinstance(doc.get(key, {}), dict):
            raise QuantvizError(f'The table\'s "{key}" must be an object.')
    return check_table(
        CalibrationTable(
            model_name=str(model.get("name", "")),
            model_sha256=str(model.get("sha256", "")),
            settings=dict(doc.get("settings", {})),
            tensors=tensors,
            weights=dict(doc.get("weights", {})),
            requant=dict(doc.get("requant", {})),
            skipped=dict(doc.get("skipped", {})),
        ),
        "The table",
    )


def loads(text: str | bytes) -> CalibrationTable:
    return table_from_dict(load_json(text, "The table"))


def read_json(path: str | Path) -> CalibrationTable:
    return loads(read_input_bytes(path, "table", JSON_BYTES))


def _is_quantviz_json(s: Sniff) -> bool:
    return s.looks_json and isinstance(s.json_doc, dict) and s.json_doc.get("format") == TABLE_FORMAT


FORMATS = (
    TableFormat(
        "json",
        text_writer(dumps),
        lambda data, _o: loads(decode_text(data, "quantviz JSON table")),
        "calibration_table.json",
        "quantviz JSON: lossless (methods, thresholds, scales, weight scales, notes, settings, model hash)",
        mime="application/json",
        detect=((2, _is_quantviz_json),),
    ),
)
