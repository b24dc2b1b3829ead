"""A person's review: per-tensor choices (method, typed threshold, kept in float) and notes.

build_table() turns statistics plus a review into the calibration table the exports write.
A review file is one .npz: the statistics (quantviz.stats format) plus the review as JSON, so it
reopens every choice and note without the model or the data (and loads with allow_pickle=False).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from quantviz.calib import METHODS, MethodConfig, Threshold, method
from quantviz.calib.result import make_threshold
from quantviz.errors import QuantvizError
from quantviz.stats import CalibrationStats, load_stats, save_stats
from quantviz.table import CalibrationTable, calibrate, entry_from

REVIEW_FORMAT = "quantviz-review"
REVIEW_VERSION = 1
OVERRIDE = "override"


@dataclass(frozen=True)
class Choice:
    """What a person chose for one tensor. method None: the review's default method."""

    method: str | None = None
    override: float | None = None
    float_kept: bool = False
    note: str = ""

    @property
    def is_default(self) -> bool:
        return self == Choice()


@dataclass(frozen=True)
class Review:
    default_method: str = "kl"
    config: MethodConfig = field(default_factory=MethodConfig)
    choices: dict[str, Choice] = field(default_factory=dict)
    # weight initializer -> scales chosen instead of abs-max (EQ's search adopted in the app);
    # quantviz.table.apply_model puts them in the table's weights and requantization
    weight_scales: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def choice(self, name: str) -> Choice:
        return self.choices.get(name, Choice())

    def with_choice(self, name: str, **changes: Any) -> Review:
        new = replace(self.choice(name), **changes)
        choices = {k: v for k, v in self.choices.items() if k != name}
        if not new.is_default:
            choices[name] = new
        return replace(self, choices=choices)

    def method_of(self, name: str) -> str:
        c = self.choice(name)
        if c.override is not None:
            return OVERRIDE
        return c.method or self.default_method

    @property
    def notes(self) -> dict[str, str]:
        return {k: c.note for k, c in self.choices.items() if c.note}


def validate_override(value: float, name: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise QuantvizError(f"The threshold of '{name}' must be a positive number, not {value}.")
    return float(value)


def chosen_threshold(stats: CalibrationStats, review: Review, name: str) -> Threshold:
    """The threshold the review selects for one tensor (method, or the typed override)."""
    t = stats.tensor(name)
    c = review.choice(name)
    if c.override is not None:
        v = validate_override(c.override, name)
        lo, hi = (-v, v) if review.config.symmetric else (max(t.min, -v), min(t.max, v))
        return make_threshold(OVERRIDE, lo, hi, review.config)
    return method(c.method or review.default_method)(t, review.config)


def build_table(stats: CalibrationStats, review: Review, base: CalibrationTable | None = None) -> CalibrationTable:
    """The table of a review: the default method everywhere, then each tensor's own choice and note.

    base: calibrate(stats, review.default_method, review.config) when the caller has it cached.
    """
    method(review.default_method)  # a clear error for an unknown default
    if base is None:
        base = calibrate(stats, review.default_method, review.config)
    tensors = dict(base.tensors)
    for name, c in review.choices.items():
        if name not in stats.tensors:
            continue  # a review made on another model version: its extra names are ignored
        t = stats.tensors[name]
        if t.empty:
            continue
        entry = tensors[name]
        if c.override is not None or c.method is not None:
            entry = entry_from(chosen_threshold(stats, review, name), t.min, t.max)
        tensors[name] = replace(entry, note=c.note, float_kept=c.float_kept)
    settings = {**base.settings, "method": review.default_method, "per_tensor_choices": len(review.choices)}
    return replace(base, tensors=tensors, settings=settings)


def review_to_dict(review: Review) -> dict[str, Any]:
    return {
        "format": REVIEW_FORMAT,
        "version": REVIEW_VERSION,
        "default_method": review.default_method,
        "config": asdict(review.config),
        "choices": {n: asdict(c) for n, c in review.choices.items()},
        "weight_scales": {n: list(v) for n, v in review.weight_scales.items()},
    }


def review_from_dict(doc: Any) -> Review:
    if not isinstance(doc, dict) or doc.get("format") != REVIEW_FORMAT:
        raise QuantvizError("This file is not a quantviz review (its format field is not quantviz-review).")
    if int(doc.get("version", 0)) > REVIEW_VERSION:
        raise QuantvizError(f"This review has version {doc['version']}; this quantviz reads up to {REVIEW_VERSION}.")
    try:
        default = str(doc["default_method"])
        if default not in METHODS:
            raise QuantvizError(f"The review's default method '{default}' is not one quantviz knows.")
        config = MethodConfig(**doc.get("config", {}))
        choices = {}
        for name, c in doc.get("choices", {}).items():
            choice = Choice(
                method=c.get("method"),
                override=None if c.get("override") is None else float(c["override"]),
                float_kept=bool(c.get("float_kept", False)),
                note=str(c.get("note", "")),
            )
            if choice.method is not None and choice.method not in METHODS:
                raise QuantvizError(f"The review chooses method '{choice.method}' for '{name}', which quantviz does not know.")
            choices[str(name)] = choice
        weights: dict[str, tuple[float, ...]] = {}
        for name, values in doc.get("weight_scales", {}).items():
            v = tuple(float(x) for x in values)
            if not v or not all(math.isfinite(x) and x > 0 for x in v):
                raise QuantvizError(f"The review's weight scales for '{name}' must be positive numbers.")
            weights[str(name)] = v
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, QuantvizError):
            raise
        raise QuantvizError(f"This review file is damaged (field {exc}).") from exc
    return Review(default, config, choices, weights)


def save_review(stats: CalibrationStats, review: Review, target: str | Path | BinaryIO) -> None:
    """One .npz holding the statistics and the review (JSON) together."""
    buf = io.BytesIO()
    save_stats(stats, buf)
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["review"] = np.array(json.dumps(review_to_dict(review)))
    np.savez_compressed(target, **arrays)  # type: ignore[arg-type]


def review_bytes(stats: CalibrationStats, review: Review) -> bytes:
    buf = io.BytesIO()
    save_review(stats, review, buf)
    return buf.getvalue()


def load_review(source: str | Path | bytes) -> tuple[CalibrationStats, Review]:
    """Reopen a review file; a plain statistics file opens with an empty review."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    stats = load_stats(raw)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            if "review" not in z.files:
                return stats, Review()
            doc = json.loads(str(z["review"]))
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise QuantvizError("The review inside this file is damaged (not valid JSON).") from exc
    return stats, review_from_dict(doc)
