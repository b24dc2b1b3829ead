"""A person's review: per-tensor choices (method, typed threshold, kept in float) and notes.

build_table() turns statistics plus a review into the calibration table the exports write.
A review file is one .npz: the statistics (quantviz.stats format) plus the review as JSON, so it
reopens every choice and note without the model or the data (and loads with allow_pickle=False).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from quantviz.calib import METHODS, MethodConfig, Threshold, method
from quantviz.calib.result import make_threshold
from quantviz.errors import QuantvizError
from quantviz.limits import TENSORS_MAX, LimitError
from quantviz.profiles import DEFAULT_PROFILE, PROFILES
from quantviz.runs import Run, runs_from_dict, runs_json
from quantviz.safeio import write_bytes
from quantviz.schema import (
    SCALE_MAX,
    SCALE_MIN,
    check_fields,
    check_override,
    check_version,
    is_number,
    method_config,
    need_dict,
    need_str,
)
from quantviz.stats import CalibrationStats, json_member, npz_bytes, read_stats_arrays, stats_arrays, stats_from_arrays
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
    # quantize this tensor although the engine profile keeps it in float (quantviz.profiles)
    quantized: bool = False

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
    # the engine profile the tables follow (quantviz.profiles: "ort", "trt", "ncnn")
    profile: str = DEFAULT_PROFILE
    # let the method clip tensors that feed graph outputs (quantviz.outputs; default: MinMax there)
    clip_outputs: bool = False

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

    def fingerprint(self) -> Hashable:
        """A hashable value equal for equal reviews (results derived from a review are stored under it)."""
        return (
            self.default_method,
            self.config,
            tuple(sorted(self.choices.items())),
            tuple(sorted(self.weight_scales.items())),
            self.profile,
            self.clip_outputs,
        )

    def without(self, names: Iterable[str], *, weights: Iterable[str] = ()) -> Review:
        """The review with these tensors' choices (and these weights' scales) removed."""
        drop, drop_w = set(names), set(weights)
        return replace(
            self,
            choices={k: v for k, v in self.choices.items() if k not in drop},
            weight_scales={k: v for k, v in self.weight_scales.items() if k not in drop_w},
        )


@dataclass(frozen=True)
class Applied:
    """A review after a batch of changes: which tensors changed, and why the others were left alone."""

    review: Review
    changed: tuple[str, ...]  # tensors
    skipped: dict[str, str]
    weights: tuple[str, ...] = ()  # weight initializers whose scales were taken


def _calibratable(stats: CalibrationStats, name: str) -> str | None:
    """Why a tensor cannot take a choice in these statistics, or None when it can."""
    t = stats.tensors.get(name)
    if t is None:
        return "not in these statistics"
    if t.empty:
        return "empty (no finite values)"
    return None


def fused_tensors(table: CalibrationTable) -> frozenset[str]:
    """Tensors quantized with another tensor's scale (a Conv output fused with its activation)."""
    return frozenset(n for n, e in table.tensors.items() if e.scale_from)


def apply_method_picks(
    review: Review, picks: Mapping[str, str], stats: CalibrationStats, *, fused: Collection[str] = ()
) -> Applied:
    """Give each tensor the method picked for it (the best method per layer), one rule for the app and
    the command line: a tensor that takes another tensor's scale (fused, see quantviz.table.apply_model)
    or has a typed threshold keeps what it has; a pick equal to the default method clears the choice."""
    r, changed, skipped = review, [], {}
    for name, picked in picks.items():
        method(picked)  # a clear error for an unknown method
        why = _calibratable(stats, name)
        if why is None and name in fused:
            why = "takes the scale of the activation it is fused with"
        if why is None and r.choice(name).override is not None:
            why = "has a typed threshold"
        if why is not None:
            skipped[name] = why
            continue
        want = None if picked == r.default_method else picked
        if r.choice(name).method != want:
            r = r.with_choice(name, method=want)
            changed.append(name)
    return Applied(r, tuple(changed), skipped)


def apply_overrides(review: Review, thresholds: Mapping[str, float], stats: CalibrationStats) -> Applied:
    """Typed thresholds for many tensors at once (an imported table, EQ's search); each is checked."""
    r, changed, skipped = review, [], {}
    for name, value in thresholds.items():
        why = _calibratable(stats, name)
        if why is None:
            try:
                v = validate_override(float(value), name)
            except QuantvizError:
                why = f"its threshold {value} is not a positive number"
        if why is not None:
            skipped[name] = why
            continue
        r = r.with_choice(name, override=v)
        changed.append(name)
    return Applied(r, tuple(changed), skipped)


def adopt_table_scales(review: Review, table: CalibrationTable, stats: CalibrationStats, *, method_name: str) -> Applied:
    """Take the activation thresholds and weight scales a table's `method_name` found (EQ's search):
    thresholds become typed thresholds, weight scales replace abs-max ones."""
    thresholds = {n: float(e.threshold) for n, e in table.tensors.items() if e.method == method_name}
    applied = apply_overrides(review, thresholds, stats)
    skipped = dict(applied.skipped)
    weights: dict[str, tuple[float, ...]] = {}
    for w, spec in table.weights.items():
        if spec.get("method") != method_name:
            continue
        values = tuple(float(x) for x in spec.get("scales", ()))
        if values and all(math.isfinite(x) and x > 0 for x in values):
            weights[w] = values
        else:
            skipped[w] = "its weight scales are not positive numbers"
    r = replace(applied.review, weight_scales={**applied.review.weight_scales, **weights})
    return Applied(r, applied.changed, skipped, tuple(weights))


def for_statistics(review: Review, stats: CalibrationStats) -> tuple[Review, list[str]]:
    """The part of a review (made on another model) whose tensors these statistics have, and the
    names of the rest (choices on tensors they lack, weight scales are kept: apply_model ignores
    weights the model does not have)."""
    missing = [n for n in review.choices if _calibratable(stats, n) is not None]
    return review.without(missing), missing


def validate_override(value: float, name: str) -> float:
    return check_override(value, name)


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
        extra = {**entry.extra, "profile_override": True} if c.quantized else entry.extra
        tensors[name] = replace(entry, note=c.note, float_kept=c.float_kept, extra=extra)
    settings = {
        **base.settings,
        "method": review.default_method,
        "per_tensor_choices": len(review.choices),
        "profile": review.profile,
        "clip_outputs": review.clip_outputs,
    }
    return replace(base, tensors=tensors, settings=settings)


def review_to_dict(review: Review) -> dict[str, Any]:
    return {
        "format": REVIEW_FORMAT,
        "version": REVIEW_VERSION,
        "default_method": review.default_method,
        "config": asdict(review.config),
        "choices": {n: asdict(c) for n, c in review.choices.items()},
        "weight_scales": {n: list(v) for n, v in review.weight_scales.items()},
        "profile": review.profile,
        "clip_outputs": review.clip_outputs,
    }


def review_from_dict(doc: Any) -> Review:
    """A Review from its JSON, every field checked (quantviz.schema): a bad override, weight scale or
    setting is refused here, so it never reaches the session."""
    what = "This review"
    if not isinstance(doc, dict) or doc.get("format") != REVIEW_FORMAT:
        raise QuantvizError("This file is not a quantviz review (its format field is not quantviz-review).")
    check_version(doc, what, REVIEW_VERSION)
    known = {"format", "version", "default_method", "config", "choices", "weight_scales", "profile", "clip_outputs"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise QuantvizError(f"{what} has the unknown field {unknown[0]!r}.")
    if "default_method" not in doc:
        raise QuantvizError(f'{what} has no "default_method" field.')
    default = need_str(doc["default_method"], f"{what}: default_method")
    if default not in METHODS:
        raise QuantvizError(f"The review's default method '{default}' is not one quantviz knows.")
    config = method_config(doc.get("config", {}), f"{what}: config")
    raw = need_dict(doc.get("choices", {}), f"{what}: choices")
    if len(raw) > TENSORS_MAX:
        raise LimitError(f"{what} holds {len(raw)} choices, beyond quantviz's limit of {TENSORS_MAX}.")
    choices = {}
    for name, c in raw.items():
        kwargs = check_fields(c, Choice, f"{what}: choices['{name}']")
        if kwargs.get("override") is not None:
            kwargs["override"] = check_override(c["override"], name)
        choice = Choice(**kwargs)
        if choice.method is not None and choice.method not in METHODS:
            raise QuantvizError(f"The review chooses method '{choice.method}' for '{name}', which quantviz does not know.")
        choices[name] = choice
    weights: dict[str, tuple[float, ...]] = {}
    for name, values in need_dict(doc.get("weight_scales", {}), f"{what}: weight_scales").items():
        if not isinstance(values, list) or not values or not all(is_number(v) and SCALE_MIN <= v <= SCALE_MAX for v in values):
            raise QuantvizError(f"The review's weight scales for '{name}' must be a list of positive numbers (from {SCALE_MIN:g} to {SCALE_MAX:g}).")
        weights[name] = tuple(float(x) for x in values)
    prof = doc.get("profile", DEFAULT_PROFILE)
    if not isinstance(prof, str) or prof not in PROFILES:
        raise QuantvizError(f"The review's engine profile {prof!r} is not one quantviz knows ({', '.join(PROFILES)}).")
    clip_outputs = doc.get("clip_outputs", False)
    if not isinstance(clip_outputs, bool):
        raise QuantvizError(f"{what}: clip_outputs must be true or false.")
    return Review(default, config, choices, weights, prof, clip_outputs)


def check_review(review: Review) -> None:
    """What save_review writes must load: the same checks as review_from_dict."""
    review_from_dict(json.loads(json.dumps(review_to_dict(review))))


def save_review(stats: CalibrationStats, review: Review, target: str | Path | BinaryIO, runs: Sequence[Run] = ()) -> None:
    """One .npz holding the statistics, the review and the analysis runs (JSON) together; all checked
    before writing."""
    check_review(review)
    arrays = stats_arrays(stats)
    arrays["review"] = np.array(json.dumps(review_to_dict(review), allow_nan=False))
    if runs:
        text = runs_json(runs)
        runs_from_dict(json.loads(text))  # what is written must load
        arrays["runs"] = np.array(text)
    data = npz_bytes(arrays)
    if isinstance(target, str | Path):
        write_bytes(target, data, "review file")
    else:
        target.write(data)


def review_bytes(stats: CalibrationStats, review: Review, runs: Sequence[Run] = ()) -> bytes:
    buf = io.BytesIO()
    save_review(stats, review, buf, runs)
    return buf.getvalue()


@dataclass(frozen=True)
class ReviewFile:
    """What a review file holds: statistics, the review, and the analysis runs (none in older files)."""

    stats: CalibrationStats
    review: Review
    runs: tuple[Run, ...] = ()


def open_review(source: str | Path | bytes) -> ReviewFile:
    """Reopen a review file; a plain statistics file opens with an empty review, a file written before
    runs were saved with none. Read once, within quantviz.limits, and checked whole before anything is
    returned."""
    arrays = read_stats_arrays(source, extra=frozenset({"review", "runs"}))
    stats = stats_from_arrays(arrays)
    review = review_from_dict(json_member(arrays, "review", "This review file")) if "review" in arrays else Review()
    runs = tuple(runs_from_dict(json_member(arrays, "runs", "This review file"))) if "runs" in arrays else ()
    return ReviewFile(stats, review, runs)


def load_review(source: str | Path | bytes) -> tuple[CalibrationStats, Review]:
    """The statistics and the review of a review file (open_review for its runs too)."""
    f = open_review(source)
    return f.stats, f.review
