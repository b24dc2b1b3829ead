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
from quantviz.table import CalibrationTable, TensorEntry

_REQUIRED = ("method", "min", "max", "threshold", "scale")


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    if math.isfinite(v):
        return float(v)
    return str(v)  # "nan" / "inf": JSON has no literal for them


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
        if e.extra:
            d["extra"] = e.extra
        tensors[name] = d
    out: dict[str, Any] = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "model": {"name": table.model_name, "sha256": table.model_sha256},
        "settings": table.settings,
        "tensors": tensors,
        "weights": table.weights,
        "requant": table.requant,
    }
    if table.skipped:
        out["skipped"] = table.skipped
    return out


def dumps(table: CalibrationTable) -> str:
    return json.dumps(table_to_dict(table), indent=1, allow_nan=False)


def write_json(table: CalibrationTable, path: str | Path) -> None:
    Path(path).write_text(dumps(table), encoding="utf-8")


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise QuantvizError(f"{where} must be a number, not {json.dumps(value)}.")
    try:
        return float(value)
    except ValueError:
        raise QuantvizError(f"{where} must be a number, not {json.dumps(value)}.") from None


def table_from_dict(doc: Any) -> CalibrationTable:
    if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
        raise QuantvizError("This JSON is not a quantviz calibration table (its \"format\" is not quantviz-calibration).")
    if int(doc.get("version", 0)) > TABLE_VERSION:
        raise QuantvizError(f"This table has version {doc['version']}; this quantviz reads up to {TABLE_VERSION}: upgrade quantviz.")
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
        tensors[name] = TensorEntry(
            method=str(d["method"]),
            min=_float(d["min"], f'tensors["{name}"].min'),
            max=_float(d["max"], f'tensors["{name}"].max'),
            threshold=_float(d["threshold"], f'tensors["{name}"].threshold'),
            scale=_float(d["scale"], f'tensors["{name}"].scale'),
            zero_point=int(d.get("zero_point", 0)),
            cosine=None if cos is None else _float(cos, f'tensors["{name}"].cosine'),
            note=str(d.get("note", "")),
            float_kept=bool(d.get("float", False)),
            shared_with=tuple(d.get("shared_with", ())),
            extra=dict(d.get("extra", {})),
        )
    model = doc.get("model", {}) or {}
    return CalibrationTable(
        model_name=str(model.get("name", "")),
        model_sha256=str(model.get("sha256", "")),
        settings=dict(doc.get("settings", {})),
        tensors=tensors,
        weights=dict(doc.get("weights", {})),
        requant=dict(doc.get("requant", {})),
        skipped=dict(doc.get("skipped", {})),
    )


def loads(text: str) -> CalibrationTable:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuantvizError(f"The table is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from exc
    return table_from_dict(doc)


def read_json(path: str | Path) -> CalibrationTable:
    p = Path(path)
    if not p.exists():
        raise QuantvizError(f"The table '{p}' does not exist.")
    return loads(p.read_text(encoding="utf-8"))
