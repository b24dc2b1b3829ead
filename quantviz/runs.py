"""Runs: each analysis kept as a named record (its table, settings and figures) and two of them compared.

A Run holds what an analysis (quantviz.sensitivity.LayerReport) measured, small enough to keep ten per
model in a session and to save in the review file: the thresholds the table placed, the end-to-end
figures per graph output and each layer's isolated and accumulated cosine and SNR. compare(a, b) says,
per layer, how much b gains on a (1 - cosine and SNR in dB, isolated and accumulated), sorted by gain,
and how the end-to-end figures moved.

Gain is measured in SNR dB (b - a): scale-free, so a layer going from 1e-2 to 1e-3 (1 - cosine) ranks
with one going from 1e-5 to 1e-6, where a plain difference of 1 - cosine would rank only the first.
Non-finite figures (a layer whose output is all zeros, an exact match's infinite SNR) are kept as
such; in the file they are the strings "nan", "inf" and "-inf" (JSON has no such numbers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from quantviz.calib import METHOD_LABELS
from quantviz.errors import QuantvizError
from quantviz.limits import RUNS_MAX, TENSORS_MAX, LimitError
from quantviz.profiles import DEFAULT_PROFILE, PROFILES
from quantviz.schema import check_version, is_int, is_number, need_bool, need_dict, need_int, need_str

if TYPE_CHECKING:  # quantviz.review saves runs: a runtime import would be circular
    from quantviz.review import Review
    from quantviz.sensitivity import LayerReport

RUNS_FORMAT = "quantviz-runs"
RUNS_VERSION = 1
ISOLATED, ACCUMULATED = "isolated", "accumulated"


@dataclass(frozen=True)
class LayerFigures:
    """One layer's figures in a run."""

    layer: str
    op_type: str
    isolated_cosine: float
    isolated_snr_db: float
    accumulated_cosine: float
    accumulated_snr_db: float


@dataclass(frozen=True)
class EndToEnd:
    """One graph output's end-to-end figures in a run (top-1 and accuracy only where they apply)."""

    output: str
    cosine: float
    snr_db: float
    top1_agreement: float | None = None
    accuracy_quantized: float | None = None


@dataclass(frozen=True)
class Run:
    """One analysis, named. id stays when the name is edited (results computed from a run use it)."""

    id: str
    name: str
    when: str  # ISO 8601, UTC
    method: str  # the review's default method
    choices: int  # tensors with their own method, threshold or float choice
    per_channel: bool
    samples: int
    data: str  # which data it ran on
    thresholds: dict[str, tuple[float, float, int]]  # tensor -> (threshold, scale, zero point) placed
    outputs: tuple[EndToEnd, ...]
    layers: tuple[LayerFigures, ...]
    # what the whole table had besides its methods, when not the default ("asymmetric", "TensorRT
    # profile"): two runs of one method told apart (table_traits; "" in files written before)
    table: str = ""

    @property
    def settings(self) -> str:
        """The settings in one line: 'KL + 3 choices, asymmetric, per-channel, 256 samples of digits_eval.npz'."""
        label = METHOD_LABELS.get(self.method, self.method)
        more = f" + {self.choices} choice{'s' if self.choices != 1 else ''}" if self.choices else ""
        table = f", {self.table}" if self.table else ""
        return f"{label}{more}{table}, {'per-channel' if self.per_channel else 'per-tensor'}, {self.samples} samples of {self.data}"


SHORT_LABELS = {"kl": "KL", "kl_ncnn": "KL ncnn", "ema": "EMA"}  # run names stay short: "KL 14:05:07"


def short_label(method: str) -> str:
    return SHORT_LABELS.get(method, METHOD_LABELS.get(method, method))


def one_minus(cosine: float) -> float:
    return 1.0 - cosine


def table_traits(review: Review) -> str:
    """The review's table-wide settings that are not the defaults, in a few words: 'asymmetric,
    TensorRT profile' ('' for a symmetric table on the default profile)."""
    traits = [] if review.config.symmetric else ["asymmetric"]
    if review.profile != DEFAULT_PROFILE:
        traits.append(f"{PROFILES[review.profile].title if review.profile in PROFILES else review.profile} profile")
    return ", ".join(traits)


def run_from_report(report: LayerReport, review: Review, *, id: str, when: datetime, label: str | None = None) -> Run:
    """The run of an analysis made with this review's table. label: what made the table ("best method",
    "EQ"), else the default method's name (with the count of per-tensor choices); the table-wide
    settings that are not the defaults in brackets (asymmetric...); the time follows."""
    method_label = short_label(review.default_method)
    head = label or (f"{method_label} + {len(review.choices)}" if review.choices else method_label)
    table = table_traits(review)
    return Run(
        id=id,
        name=f"{head} ({table}) {when:%H:%M:%S}" if table else f"{head} {when:%H:%M:%S}",
        when=when.isoformat(timespec="seconds"),
        method=review.default_method,
        choices=len(review.choices),
        per_channel=report.per_channel,
        samples=report.samples,
        data=report.data_description,
        thresholds=dict(report.thresholds),
        outputs=tuple(
            EndToEnd(o.output, o.figures.cosine, o.figures.snr_db, o.top1_agreement, o.accuracy_quantized) for o in report.outputs
        ),
        layers=tuple(
            LayerFigures(le.layer, le.op_type, le.isolated.cosine, le.isolated.snr_db, le.accumulated.cosine, le.accumulated.snr_db)
            for le in report.layers
        ),
        table=table,
    )


def keep_last(runs: Sequence[Run], new: Run, limit: int) -> list[Run]:
    """The runs with the new one added last, the oldest dropped beyond limit."""
    return [*runs, new][-limit:]


def renamed(runs: Sequence[Run], run_id: str, name: str) -> list[Run]:
    """The runs with one renamed (an empty name keeps the old one)."""
    name = name.strip()
    return [replace(r, name=name) if r.id == run_id and name else r for r in runs]


# --- comparing two runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDelta:
    """How a layer's error moved from run a to run b; gains are positive when b is better."""

    layer: str
    op_type: str
    a_isolated: float  # 1 - cosine
    b_isolated: float
    a_accumulated: float
    b_accumulated: float
    isolated_snr_gain_db: float  # b's SNR - a's
    accumulated_snr_gain_db: float

    @property
    def isolated_gain(self) -> float:
        """a's 1 - cosine minus b's (positive: b's error is smaller)."""
        return self.a_isolated - self.b_isolated

    @property
    def accumulated_gain(self) -> float:
        return self.a_accumulated - self.b_accumulated


@dataclass(frozen=True)
class OutputDelta:
    output: str
    a_cosine: float
    b_cosine: float
    a_snr_db: float
    b_snr_db: float
    a_accuracy: float | None = None
    b_accuracy: float | None = None

    @property
    def cosine_gain(self) -> float:
        return self.b_cosine - self.a_cosine

    @property
    def snr_gain_db(self) -> float:
        return self.b_snr_db - self.a_snr_db


@dataclass(frozen=True)
class Comparison:
    """Run b against run a: per layer (sorted by gain, largest first, unmeasurable last) and end to end."""

    by: str  # ISOLATED or ACCUMULATED: the gain the layers are sorted by
    layers: tuple[LayerDelta, ...]
    outputs: tuple[OutputDelta, ...]
    only_a: tuple[str, ...]  # layers a measured and b did not (kept in float in b), and the reverse
    only_b: tuple[str, ...]
    thresholds_changed: int  # tensors whose placed threshold differs between the two tables


def gain(d: LayerDelta, by: str) -> float:
    """The layer's SNR gain in dB (B - A), isolated or accumulated."""
    return d.isolated_snr_gain_db if by == ISOLATED else d.accumulated_snr_gain_db


def compare(a: Run, b: Run, by: str = ISOLATED) -> Comparison:
    """Per-layer deltas of b against a, sorted by SNR gain (by: isolated or accumulated), and the
    end-to-end change per graph output. Layers are matched by name; outputs too."""
    if by not in (ISOLATED, ACCUMULATED):
        raise QuantvizError(f"Compare by 'isolated' or 'accumulated', not '{by}'.")
    la, lb = {x.layer: x for x in a.layers}, {x.layer: x for x in b.layers}
    deltas = [
        LayerDelta(
            x.layer, x.op_type,
            one_minus(x.isolated_cosine), one_minus(y.isolated_cosine),
            one_minus(x.accumulated_cosine), one_minus(y.accumulated_cosine),
            y.isolated_snr_db - x.isolated_snr_db, y.accumulated_snr_db - x.accumulated_snr_db,
        )  # fmt: skip
        for x in a.layers
        if (y := lb.get(x.layer)) is not None
    ]

    def key(d: LayerDelta) -> tuple[bool, float]:
        g = gain(d, by)
        return (math.isnan(g), -g if not math.isnan(g) else 0.0)

    deltas.sort(key=key)
    ob = {o.output: o for o in b.outputs}
    outputs = tuple(
        OutputDelta(o.output, o.cosine, p.cosine, o.snr_db, p.snr_db, o.accuracy_quantized, p.accuracy_quantized)
        for o in a.outputs
        if (p := ob.get(o.output)) is not None
    )
    changed = sum(1 for t in set(a.thresholds) | set(b.thresholds) if a.thresholds.get(t) != b.thresholds.get(t))
    return Comparison(
        by, tuple(deltas), outputs,
        tuple(n for n in la if n not in lb), tuple(n for n in lb if n not in la), changed,
    )  # fmt: skip


# --- the file form (saved in the review file, quantviz.review) ---------------------------------------


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _read_num(value: Any, where: str) -> float:
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if not is_number(value):
        raise QuantvizError(f'{where} must be a number (or "nan", "inf", "-inf"), not {value!r:.40}.')
    return float(value)


def _opt(value: Any, where: str) -> float | None:
    return None if value is None else _read_num(value, where)


def runs_to_dict(runs: Sequence[Run]) -> dict[str, Any]:
    return {
        "format": RUNS_FORMAT,
        "version": RUNS_VERSION,
        "runs": [
            {
                "id": r.id, "name": r.name, "when": r.when, "method": r.method, "choices": r.choices,
                "per_channel": r.per_channel, "samples": r.samples, "data": r.data,
                "thresholds": {t: [_num(v[0]), _num(v[1]), v[2]] for t, v in r.thresholds.items()},
                "outputs": [[o.output, _num(o.cosine), _num(o.snr_db), o.top1_agreement, o.accuracy_quantized] for o in r.outputs],
                "layers": [
                    [x.layer, x.op_type, _num(x.isolated_cosine), _num(x.isolated_snr_db), _num(x.accumulated_cosine), _num(x.accumulated_snr_db)]
                    for x in r.layers
                ],
                **({"table": r.table} if r.table else {}),
            }  # fmt: skip
            for r in runs
        ],
    }


def runs_json(runs: Sequence[Run]) -> str:
    return json.dumps(runs_to_dict(runs), allow_nan=False)


_RUN_FIELDS = frozenset({"id", "name", "when", "method", "choices", "per_channel", "samples", "data", "thresholds", "outputs", "layers"})
_RUN_OPTIONAL = frozenset({"table"})  # absent from runs written before it


def _row(value: Any, n: int, where: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != n:
        raise QuantvizError(f"{where} must be a list of {n} values.")
    return value


def _run_from_dict(doc: Any, where: str) -> Run:
    d = need_dict(doc, where)
    unknown = sorted(set(d) - _RUN_FIELDS - _RUN_OPTIONAL)
    if unknown:
        raise QuantvizError(f"{where} has the unknown field {unknown[0]!r}.")
    missing = sorted(_RUN_FIELDS - set(d))
    if missing:
        raise QuantvizError(f'{where} has no "{missing[0]}" field.')
    thresholds: dict[str, tuple[float, float, int]] = {}
    raw_t = need_dict(d["thresholds"], f"{where}.thresholds")
    if len(raw_t) > TENSORS_MAX:
        raise LimitError(f"{where} holds {len(raw_t)} thresholds, beyond quantviz's limit of {TENSORS_MAX}.")
    for t, v in raw_t.items():
        w = f"{where}.thresholds['{t}']"
        row = _row(v, 3, w)
        if not is_int(row[2]):
            raise QuantvizError(f"{w}: its zero point must be a whole number.")
        thresholds[t] = (_read_num(row[0], w), _read_num(row[1], w), int(row[2]))
    outputs = []
    raw_o = d["outputs"]
    if not isinstance(raw_o, list) or len(raw_o) > TENSORS_MAX:
        raise QuantvizError(f"{where}.outputs must be a list of at most {TENSORS_MAX} outputs.")
    for i, v in enumerate(raw_o):
        w = f"{where}.outputs[{i}]"
        row = _row(v, 5, w)
        outputs.append(EndToEnd(need_str(row[0], w), _read_num(row[1], w), _read_num(row[2], w), _opt(row[3], w), _opt(row[4], w)))
    layers = []
    raw_l = d["layers"]
    if not isinstance(raw_l, list) or len(raw_l) > TENSORS_MAX:
        raise QuantvizError(f"{where}.layers must be a list of at most {TENSORS_MAX} layers.")
    for i, v in enumerate(raw_l):
        w = f"{where}.layers[{i}]"
        row = _row(v, 6, w)
        layers.append(LayerFigures(need_str(row[0], w), need_str(row[1], w), *(_read_num(x, w) for x in row[2:])))
    return Run(
        id=need_str(d["id"], f"{where}.id"),
        name=need_str(d["name"], f"{where}.name"),
        when=need_str(d["when"], f"{where}.when"),
        method=need_str(d["method"], f"{where}.method"),
        choices=need_int(d["choices"], f"{where}.choices", 0, TENSORS_MAX),
        per_channel=need_bool(d["per_channel"], f"{where}.per_channel"),
        samples=need_int(d["samples"], f"{where}.samples", 0),
        data=need_str(d["data"], f"{where}.data"),
        thresholds=thresholds,
        outputs=tuple(outputs),
        layers=tuple(layers),
        table=need_str(d.get("table", ""), f"{where}.table"),
    )


def runs_from_dict(doc: Any) -> list[Run]:
    """The runs of a review file, every field checked (one sentence naming the first bad one)."""
    what = "This review file's runs"
    if not isinstance(doc, dict) or doc.get("format") != RUNS_FORMAT:
        raise QuantvizError(f"{what} are not quantviz runs (their format field is not {RUNS_FORMAT}).")
    check_version(doc, what, RUNS_VERSION)
    unknown = sorted(set(doc) - {"format", "version", "runs"})
    if unknown:
        raise QuantvizError(f"{what} have the unknown field {unknown[0]!r}.")
    raw = doc.get("runs", [])
    if not isinstance(raw, list):
        raise QuantvizError(f"{what} must be a list.")
    if len(raw) > RUNS_MAX:
        raise LimitError(f"This review file holds {len(raw)} runs, beyond quantviz's limit of {RUNS_MAX}.")
    runs = [_run_from_dict(r, f"Run {i + 1} of this review file") for i, r in enumerate(raw)]
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise QuantvizError("This review file names two runs with the same id.")
    return runs


def by_id(runs: Sequence[Run]) -> Mapping[str, Run]:
    return {r.id: r for r in runs}
