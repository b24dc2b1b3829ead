"""Mixed precision to a target: the fewest layers to take out of int8 so the model stays within X of float.

The question AMD Quark, Qualcomm AIMET and Intel Neural Compressor answer with greedy or Pareto
searches; here every step is open and kept (the trace).

Target (parse_target): end-to-end cosine (`cosine=0.999`: the lowest, over the model outputs, of the
mean per-sample cosine, quantviz.metrics), SNR in dB (`snr=30`: the lowest over outputs), top-1 accuracy
drop in points where labels are given (`top1-drop=0.5`: 100 x (float accuracy - quantized accuracy) on
the first [N, classes] output), or a function the user names (`metric=package.module:function>=0.9`,
or `<=` for a figure where lower is better) called as function(float_outputs, quantized_outputs, labels)
with dicts output name -> array over all samples and labels None when none are given.

Fallbacks (quantviz.fallback): float, or int16 activations with int8 weights, applied to a layer's
quantized inputs and its output together, and to every layer of its fused-scale group (a Conv and the
ReLU-like activation sharing its scale, TensorEntry.shared_with): a group is one unit of the search.

The search (search()):
1. order: units by measured sensitivity, worst first: the isolated cosine of the layer (its error
   alone, quantviz.sensitivity), the accumulated cosine breaking ties and placing units without an
   isolated figure; a group takes its worst member's figures;
2. add: units are added in that order until the target is met. Each step is the whole model run end to
   end on the samples, never an estimate. With gallop (the default) the steps add 1, 1, 2, 4, 8, ...
   units; when a step of k > 1 units meets the target, bisection within those k finds the shortest
   prefix of the order that meets it (each probe measured), so a model needing m units costs about
   2 log2(m) steps instead of m. gallop=False adds one unit a step;
3. remove: each chosen unit, least sensitive first, is taken back to int8 if the target is still met
   without it (measured); those the target needs stay, each with the figure measured without it (why).
The configuration of every step, its figure and its share of MACs are kept in the trace (Step).

Cost: the float outputs of the samples are computed once and cached (Evaluator), and so are the input
batches; a step builds no new quantization (one onnxruntime quantize_static call makes the int8 model
once, quantviz.fallback edits a copy of it) and runs only the edited QDQ model, no isolated model and
no layer outputs. A configuration measured once is not run again. bench/bench_mixed.py measures this.
"""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from quantviz.collect import effective_batch_size
from quantviz.config import DEFAULT_BATCH_SIZE
from quantviz.data import CalibrationSource, Cancel, batch_loop
from quantviz.errors import QuantvizError
from quantviz.fallback import FLOAT, INT16, PRECISIONS, apply_fallbacks, int16_domain, layer_macs
from quantviz.metrics import ErrorAccumulator
from quantviz.model import LoadedModel
from quantviz.qdq import QdqBuild, build
from quantviz.runtime import first_line, new_session, session_options
from quantviz.sensitivity import LayerReport
from quantviz.table import CalibrationTable

TARGET_KINDS = ("cosine", "snr", "top1-drop", "metric")
ORDER_SAMPLES = 256  # samples of the analysis that orders the layers (the steps measure on all samples)
MIXED_CACHE_BYTES = 512 * 2**20  # cached inputs and float outputs of the samples, at most
SETTINGS_KEY = "mixed"  # CalibrationTable.settings key holding the search (fallbacks and trace)
MIXED_NOTE = "mixed precision: {precision} ({target})"


# ---------------------------------------------------------------------------------------------
# Target


@dataclass(frozen=True)
class Target:
    """What the model must reach. kind: cosine | snr | top1-drop | metric; value: the bound;
    higher_is_better: met when the figure is >= value (cosine, snr, most metrics) or <= value
    (top1-drop, a metric given with <=); function: "package.module:function" for kind metric."""

    kind: str
    value: float
    higher_is_better: bool = True
    function: str | None = None

    @property
    def text(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        name = f"metric {self.function}" if self.kind == "metric" else self.kind
        return f"{name} {op} {self.value:g}"

    @property
    def spec(self) -> str:
        """The form parse_target reads back."""
        if self.kind == "metric":
            return f"metric={self.function}{'>=' if self.higher_is_better else '<='}{self.value:g}"
        return f"{self.kind}={self.value:g}"

    def met(self, figure: float) -> bool:
        if math.isnan(figure):
            return False
        return figure >= self.value if self.higher_is_better else figure <= self.value


_METRIC_RE = re.compile(r"^\s*([A-Za-z_][\w.]*:[A-Za-z_]\w*)\s*(>=|<=)\s*(\S+)\s*$")


def parse_target(text: str) -> Target:
    """cosine=0.999 | snr=30 | top1-drop=0.5 | metric=package.module:function>=VALUE (or <=)."""
    kind, sep, rest = text.partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in TARGET_KINDS:
        raise QuantvizError(
            f"--target takes cosine=0.999, snr=30, top1-drop=0.5 or metric=package.module:function>=VALUE, not '{text}'."
        )
    if kind == "metric":
        m = _METRIC_RE.match(rest)
        if m is None:
            raise QuantvizError(
                f"A metric target names the function and the bound it must reach, e.g. metric=mypkg.eval:map50>=0.45 "
                f"(or <= for a figure where lower is better), not '{text}'."
            )
        value = _number(m.group(3), text)
        return Target("metric", value, m.group(2) == ">=", m.group(1))
    value = _number(rest, text)
    if kind == "cosine" and not -1 <= value <= 1:
        raise QuantvizError(f"A cosine target lies between -1 and 1 (e.g. cosine=0.999), not {value:g}.")
    if kind == "top1-drop" and value < 0:
        raise QuantvizError(f"A top-1 drop is in points of accuracy, 0 or more (e.g. top1-drop=0.5), not {value:g}.")
    return Target(kind, value, kind != "top1-drop")


def _number(text: str, whole: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise QuantvizError(f"The bound of --target '{whole}' is not a number.") from None
    if not math.isfinite(v):
        raise QuantvizError(f"The bound of --target '{whole}' must be a finite number.")
    return v


MetricFunction = Callable[[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]], "npt.NDArray[Any] | None"], float]


def load_metric(function: str) -> MetricFunction:
    """The user's function "package.module:function" (imported; a clear sentence when it cannot be)."""
    module_name, _, attr = function.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of the user's module is said the same way
        raise QuantvizError(f"Cannot import the metric module '{module_name}': {first_line(exc)}.") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise QuantvizError(f"The module '{module_name}' has no function '{attr}'.")
    return fn  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Measuring one configuration end to end


@dataclass(frozen=True)
class Measure:
    """One configuration's end-to-end figures: value is the target's figure."""

    value: float
    cosine: float
    snr_db: float
    accuracy: float | None  # quantized top-1 accuracy where labels are given
    seconds: float


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    so = session_options()
    # basic optimizations only, as quantviz.sensitivity: Q/DQ run as the ONNX spec says (no fused int8 kernels)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        return new_session(proto, so)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise QuantvizError(f"onnxruntime cannot run the mixed-precision model: {first_line(exc)}") from exc


def _classifier_output(outputs: Mapping[str, npt.NDArray[Any]]) -> str | None:
    return next((k for k, v in outputs.items() if v.ndim == 2 and v.shape[1] > 1), None)


class Evaluator:
    """Runs configurations of one int8 model end to end against float outputs computed once.

    Builds the int8 QDQ model once (quantviz.qdq.build), runs the float model once over the samples
    and keeps its outputs and the input batches (at most MIXED_CACHE_BYTES), then measure(fallbacks)
    runs the QDQ model with those layers out of int8 (quantviz.fallback) and returns its figures.
    """

    def __init__(
        self,
        model: LoadedModel,
        table: CalibrationTable,
        source: CalibrationSource,
        target: Target,
        *,
        samples: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        labels: npt.ArrayLike | None = None,
        per_channel: bool = True,
        qdq: QdqBuild | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        from quantviz.sensitivity import _check_labels

        self.target = target
        self.qdq = qdq or build(model, table, per_channel=per_channel)
        self.float_weights = {i.name: i for i in self.qdq.prepared.proto.graph.initializer}
        total = source.num_samples if samples is None else min(samples, source.num_samples)
        if total < 1:
            raise QuantvizError("The data holds no samples to measure the model on.")
        self.labels = _check_labels(labels, total)
        if target.kind == "top1-drop" and self.labels is None:
            raise QuantvizError("A top1-drop target needs labels: give --labels (or a 'label' array in the data .npz).")
        self.metric = load_metric(target.function) if target.kind == "metric" and target.function else None
        fsess = new_session(model.proto)
        names = [o.name for o in fsess.get_outputs()]
        self.batches: list[dict[str, npt.NDArray[Any]]] = []
        outs: dict[str, list[npt.NDArray[Any]]] = {n: [] for n in names}
        held = 0
        for _, batch, _ in batch_loop(source, effective_batch_size(model, batch_size, source), total, "Float run", cancel=cancel):
            feed = {i.name: batch[i.name] for i in fsess.get_inputs()}
            values = fsess.run(names, feed)
            self.batches.append(feed)
            for n, v in zip(names, values, strict=True):
                outs[n].append(np.asarray(v))
            held += sum(a.nbytes for a in feed.values()) + sum(np.asarray(v).nbytes for v in values)
            if held > MIXED_CACHE_BYTES:
                raise QuantvizError(
                    f"The samples and their outputs exceed {MIXED_CACHE_BYTES // 2**20} MB: give fewer samples to the search (--samples)."
                )
        self.float_outputs = {n: np.concatenate(v) for n, v in outs.items()}
        self.samples = total
        cls = _classifier_output(self.float_outputs)
        self.float_accuracy = (
            float(np.mean(np.argmax(self.float_outputs[cls], axis=1) == self.labels)) if cls and self.labels is not None else None
        )
        if target.kind == "top1-drop" and cls is None:
            raise QuantvizError("A top1-drop target needs a classifier output ([samples, classes]); this model has none.")
        self.cancel = cancel
        self._cache: dict[frozenset[tuple[str, str]], Measure] = {}
        self.runs = 0

    def model(self, fallbacks: Mapping[str, str]) -> onnx.ModelProto:
        """The QDQ model of this configuration (what the export writes)."""
        return apply_fallbacks(self.qdq.proto, fallbacks, self.float_weights)

    def outputs(self, fallbacks: Mapping[str, str]) -> dict[str, npt.NDArray[Any]]:
        sess = _session(self.model(fallbacks))
        names = list(self.float_outputs)
        got: dict[str, list[npt.NDArray[Any]]] = {n: [] for n in names}
        for k, feed in enumerate(self.batches):
            if self.cancel is not None and self.cancel():
                from quantviz.errors import CancelledError

                raise CancelledError("The mixed-precision search was cancelled.")
            try:
                values = sess.run(names, feed)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
                raise QuantvizError(
                    f"onnxruntime could not run the mixed-precision model on batch {k}: {first_line(exc)}"
                ) from exc
            for n, v in zip(names, values, strict=True):
                got[n].append(np.asarray(v))
        self.runs += 1
        return {n: np.concatenate(v) for n, v in got.items()}

    def figures(self, quant: Mapping[str, npt.NDArray[Any]]) -> tuple[float, float, float, float | None]:
        """(target value, lowest cosine, lowest SNR, quantized accuracy) of these outputs."""
        cos, snr = math.inf, math.inf
        for n, ref in self.float_outputs.items():
            acc = ErrorAccumulator()
            acc.update(ref, quant[n])
            f = acc.result()
            cos, snr = min(cos, f.cosine), min(snr, f.snr_db)
        cls = _classifier_output(self.float_outputs)
        accuracy = float(np.mean(np.argmax(quant[cls], axis=1) == self.labels)) if cls and self.labels is not None else None
        kind = self.target.kind
        if kind == "cosine":
            value = cos
        elif kind == "snr":
            value = snr
        elif kind == "top1-drop":
            assert self.float_accuracy is not None and accuracy is not None
            value = 100.0 * (self.float_accuracy - accuracy)
        else:
            assert self.metric is not None
            try:
                value = float(self.metric(dict(self.float_outputs), dict(quant), self.labels))
            except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
                raise QuantvizError(f"The metric {self.target.function} failed: {first_line(exc)}") from exc
        return value, cos, snr, accuracy

    def measure(self, fallbacks: Mapping[str, str]) -> tuple[Measure, bool]:
        """The figures of this configuration and whether they came from the cache (measured before)."""
        key = frozenset(fallbacks.items())
        if key in self._cache:
            return self._cache[key], True
        t0 = time.perf_counter()
        value, cos, snr, accuracy = self.figures(self.outputs(fallbacks))
        m = Measure(value, cos, snr, accuracy, time.perf_counter() - t0)
        self._cache[key] = m
        return m, False


# ---------------------------------------------------------------------------------------------
# Units: layers and the fused-scale groups that leave int8 together


@dataclass(frozen=True)
class Unit:
    """Layers that leave int8 together (one layer, or a fused-scale group), with the figures that order them."""

    name: str  # the most sensitive member
    layers: tuple[str, ...]
    tensors: tuple[str, ...]  # their output tensors
    isolated: float  # cosine (the group's lowest)
    accumulated: float
    macs: int


def _nan_last(v: float) -> float:
    return math.inf if math.isnan(v) else v


def units_from(report: LayerReport, table: CalibrationTable, macs: Mapping[str, int] | None = None) -> list[Unit]:
    """The analysis's layers grouped by fused scales (TensorEntry.shared_with / scale_from), worst first
    (isolated cosine, then accumulated; module doc)."""
    macs = macs or {}
    by_tensor: dict[str, list[str]] = {}
    for le in report.layers:
        by_tensor.setdefault(le.output_tensor, []).append(le.layer)
    parent: dict[str, str] = {le.layer: le.layer for le in report.layers}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for t, layers in by_tensor.items():
        e = table.tensors.get(t)
        linked = [*(e.shared_with if e else ()), *([e.scale_from] if e and e.scale_from else [])]
        for other in linked:
            for lay in [*layers, *by_tensor.get(other, [])]:
                parent[find(lay)] = find(layers[0])
    groups: dict[str, list[Any]] = {}
    for le in report.layers:
        groups.setdefault(find(le.layer), []).append(le)
    units = []
    for members in groups.values():
        worst = min(members, key=lambda le: (_nan_last(le.isolated.cosine), _nan_last(le.accumulated.cosine)))
        units.append(
            Unit(
                name=worst.layer,
                layers=tuple(le.layer for le in members),
                tensors=tuple(dict.fromkeys(le.output_tensor for le in members)),
                isolated=min((le.isolated.cosine for le in members), key=_nan_last),
                accumulated=min((le.accumulated.cosine for le in members), key=_nan_last),
                macs=sum(macs.get(le.layer, 0) for le in members),
            )
        )
    return sorted(units, key=lambda u: (_nan_last(u.isolated), _nan_last(u.accumulated)))


# ---------------------------------------------------------------------------------------------
# The search and its trace


ACTIONS = ("int8", "add", "bisect", "remove", "keep")


@dataclass(frozen=True)
class Step:
    """One measured configuration. action: int8 (nothing out), add (units added), bisect (a shorter
    prefix probed), remove (a unit taken back to int8: the target still met), keep (taking it back
    missed the target: it stays out). changed: the units this step added or tried to remove;
    fallbacks: the layers out of int8 in the configuration measured."""

    index: int
    action: str
    changed: tuple[str, ...]
    fallbacks: tuple[str, ...]
    value: float
    met: bool
    layers_out: int
    macs_share: float
    seconds: float
    cosine: float = math.nan
    snr_db: float = math.nan
    accuracy: float | None = None
    reused: bool = False  # measured at an earlier step (same configuration)


@dataclass(frozen=True)
class Fallback:
    layer: str
    precision: str
    unit: str  # the unit (group) it left int8 with
    tensor: str
    why: str


@dataclass(frozen=True)
class MixedResult:
    target: Target
    precision: str
    reached: bool
    steps: tuple[Step, ...]
    fallbacks: tuple[Fallback, ...]
    order: tuple[str, ...]  # the units in search order
    samples: int
    int8_value: float
    final_value: float
    float_accuracy: float | None = None
    total_macs: int = 0
    final_macs_share: float = 0.0
    layer_tensors: dict[str, str] = field(default_factory=dict)  # every searched layer -> its output tensor

    @property
    def configuration(self) -> dict[str, str]:
        return {f.layer: f.precision for f in self.fallbacks}


def search(
    evaluator: Evaluator,
    units: Sequence[Unit],
    precision: str = FLOAT,
    *,
    gallop: bool = True,
    on_step: Callable[[Step], None] | None = None,
) -> MixedResult:
    """The greedy search of the module doc over `units` (in the order given)."""
    if precision not in PRECISIONS:
        raise QuantvizError(f"The fallback precision is one of {', '.join(PRECISIONS)}, not '{precision}'.")
    target = evaluator.target
    total_macs = max(sum(u.macs for u in units), 0)
    steps: list[Step] = []
    by_name = {u.name: u for u in units}

    def config(chosen: Iterable[Unit]) -> dict[str, str]:
        return {lay: precision for u in chosen for lay in u.layers}

    def measure(chosen: Sequence[Unit], action: str, changed: Sequence[Unit]) -> Step:
        cfg = config(chosen)
        m, reused = evaluator.measure(cfg)
        macs = sum(u.macs for u in chosen)
        st = Step(
            index=len(steps), action=action, changed=tuple(u.name for u in changed), fallbacks=tuple(cfg),
            value=m.value, met=target.met(m.value), layers_out=len(cfg), macs_share=macs / total_macs if total_macs else 0.0,
            seconds=0.0 if reused else m.seconds, cosine=m.cosine, snr_db=m.snr_db, accuracy=m.accuracy, reused=reused,
        )  # fmt: skip
        steps.append(st)
        if on_step is not None:
            on_step(st)
        return st

    start = measure([], "int8", [])
    chosen: list[Unit] = []
    reached = start.met
    i, size = 0, 1
    while not reached and i < len(units):
        batch = list(units[i : i + size])
        st = measure([*chosen, *batch], "add", batch)
        if st.met:
            lo, hi = 0, len(batch)  # prefix lengths of batch: lo misses (known), hi meets
            while hi - lo > 1:
                mid = (lo + hi) // 2
                probe = measure([*chosen, *batch[:mid]], "bisect", batch[:mid])
                if probe.met:
                    hi = mid
                else:
                    lo = mid
            chosen += batch[:hi]
            reached = True
            break
        chosen += batch
        i += len(batch)
        if gallop:
            size *= 2
    why: dict[str, str] = {}
    if reached and chosen:
        for u in reversed(list(chosen)):
            trial = [c for c in chosen if c is not u]
            st = measure(trial, "remove", [u])
            if st.met:
                chosen = trial
                steps[-1] = replace(st, action="remove")
            else:
                steps[-1] = replace(st, action="keep")
                why[u.name] = (
                    f"isolated cosine {u.isolated:.5f} (rank {list(by_name).index(u.name) + 1} of {len(units)}); "
                    f"without it {target.kind} is {st.value:.5g}, missing {target.text}"
                )
    elif not reached:
        for u in chosen:
            why[u.name] = f"isolated cosine {u.isolated:.5f}: every unit out of int8 and the target is still missed"
    final = evaluator.measure(config(chosen))[0] if chosen else evaluator.measure({})[0]
    fallbacks = tuple(
        Fallback(layer=lay, precision=precision, unit=u.name, tensor=_tensor_of(u, k), why=why.get(u.name, ""))
        for u in chosen
        for k, lay in enumerate(u.layers)
    )
    return MixedResult(
        target=target, precision=precision, reached=reached, steps=tuple(steps), fallbacks=fallbacks,
        order=tuple(u.name for u in units), samples=evaluator.samples, int8_value=start.value, final_value=final.value,
        float_accuracy=evaluator.float_accuracy, total_macs=total_macs,
        final_macs_share=sum(u.macs for u in chosen) / total_macs if total_macs else 0.0,
        layer_tensors={lay: _tensor_of(u, k) for u in units for k, lay in enumerate(u.layers)},
    )  # fmt: skip


def _tensor_of(u: Unit, k: int) -> str:
    return u.tensors[k] if k < len(u.tensors) else u.tensors[-1]


def run_search(
    model: LoadedModel,
    table: CalibrationTable,
    source: CalibrationSource,
    target: Target,
    *,
    precision: str = FLOAT,
    samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    labels: npt.ArrayLike | None = None,
    per_channel: bool = True,
    report: LayerReport | None = None,
    order_samples: int | None = ORDER_SAMPLES,
    gallop: bool = True,
    on_step: Callable[[Step], None] | None = None,
    cancel: Cancel | None = None,
) -> tuple[MixedResult, Evaluator]:
    """The whole search: the analysis that orders the layers on at most order_samples samples (unless
    `report` is given: the same model and table), the evaluator (every step on `samples` samples, all by
    default), the search."""
    from quantviz.sensitivity import analyze

    if precision == INT16:
        int16_domain(model.proto)  # always answers; the domain is chosen per model (quantviz.fallback)
    evaluator = Evaluator(
        model,
        table,
        source,
        target,
        samples=samples,
        batch_size=batch_size,
        labels=labels,
        per_channel=per_channel,
        cancel=cancel,
    )
    if report is None:
        n = min(x for x in (samples, order_samples, source.num_samples) if x is not None)
        report = analyze(
            model, table, source, samples=n, batch_size=batch_size, per_channel=per_channel, cancel=cancel, parts=False
        )
    units = units_from(report, table, layer_macs(evaluator.qdq.prepared.proto))
    return search(evaluator, units, precision, gallop=gallop, on_step=on_step), evaluator


# ---------------------------------------------------------------------------------------------
# The table carries the result


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def result_to_dict(result: MixedResult) -> dict[str, Any]:
    """The JSON form kept in the table's settings["mixed"]."""
    return {
        "target": result.target.spec,
        "target_value": result.target.value,
        "precision": result.precision,
        "reached": result.reached,
        "samples": result.samples,
        "int8_value": _num(result.int8_value),
        "final_value": _num(result.final_value),
        "float_accuracy": _num(result.float_accuracy),
        "total_macs": result.total_macs,
        "final_macs_share": result.final_macs_share,
        "order": list(result.order),
        "layer_tensors": dict(result.layer_tensors),
        "fallbacks": {
            f.layer: {"precision": f.precision, "unit": f.unit, "tensor": f.tensor, "why": f.why} for f in result.fallbacks
        },
        "trace": [
            {
                "step": s.index,
                "action": s.action,
                "changed": list(s.changed),
                "fallbacks": list(s.fallbacks),
                "value": _num(s.value),
                "met": s.met,
                "layers_out": s.layers_out,
                "macs_share": s.macs_share,
                "seconds": round(s.seconds, 4),
                "cosine": _num(s.cosine),
                "snr_db": _num(s.snr_db),
                "accuracy": _num(s.accuracy),
                "reused": s.reused,
            }  # fmt: skip
            for s in result.steps
        ],
    }


def mixed_table(table: CalibrationTable, result: MixedResult) -> CalibrationTable:
    """The table with the search's fallbacks: each fallback layer's output tensor marked float (so
    the TensorRT cache and onnxruntime's tables leave it out), with a note and extra["mixed"] = the
    precision; settings["mixed"] holds the fallbacks by layer and the whole trace (result_to_dict).
    Tensors the table already kept in float are left as they were."""
    tensors = dict(table.tensors)
    note = MIXED_NOTE.format(precision=result.precision, target=result.target.text)
    for f in result.fallbacks:
        e = tensors.get(f.tensor)
        if e is None or e.float_kept:
            continue
        tensors[f.tensor] = replace(
            e, float_kept=True, note=(e.note + "; " if e.note else "") + note, extra={**e.extra, "mixed": f.precision}
        )
    return replace(table, tensors=tensors, settings={**table.settings, SETTINGS_KEY: result_to_dict(result)})


def table_fallbacks(table: CalibrationTable) -> dict[str, str]:
    """Layer -> precision of a table written by mixed_table (empty for any other table)."""
    doc = table.settings.get(SETTINGS_KEY)
    if not isinstance(doc, dict):
        return {}
    fb = doc.get("fallbacks")
    if not isinstance(fb, dict):
        raise QuantvizError("The table's mixed-precision section has no 'fallbacks' mapping: it was edited or damaged.")
    out: dict[str, str] = {}
    for layer, spec in fb.items():
        p = spec.get("precision") if isinstance(spec, dict) else None
        if p not in PRECISIONS:
            raise QuantvizError(f"The table's fallback of layer '{layer}' has no precision among {', '.join(PRECISIONS)}.")
        out[str(layer)] = str(p)
    return out


def mixed_note(table: CalibrationTable) -> str:
    """One line for the formats that hold a comment (ncnn): what the search left out of int8."""
    doc = table.settings.get(SETTINGS_KEY) or {}
    fb = table_fallbacks(table)
    precision = ", ".join(sorted(set(fb.values())))
    return (
        f"quantviz mixed precision to {doc.get('target', '?')}: {len(fb)} layers out of int8 ({precision}), "
        "kept in float here (commented out)"
    )


def int8_base(table: CalibrationTable) -> CalibrationTable:
    """The table without the marks mixed_table added (the int8 table the fallbacks are applied to)."""
    tensors = {
        n: replace(e, float_kept=False, note=_strip_note(e.note), extra={k: v for k, v in e.extra.items() if k != "mixed"})
        if "mixed" in e.extra
        else e
        for n, e in table.tensors.items()
    }
    return replace(table, tensors=tensors, settings={k: v for k, v in table.settings.items() if k != SETTINGS_KEY})


def _strip_note(note: str) -> str:
    parts = [p for p in note.split("; ") if not p.startswith("mixed precision: ")]
    return "; ".join(parts)


def mixed_qdq_model(
    model: LoadedModel, table: CalibrationTable, *, per_channel: bool = True, reduce_range: bool = False
) -> onnx.ModelProto:
    """The QDQ model of a table written by mixed_table: the int8 model of its base table with the
    fallbacks applied exactly as the search measured them (quantviz.fallback)."""
    fallbacks = table_fallbacks(table)
    qdq = build(model, int8_base(table), per_channel=per_channel, reduce_range=reduce_range)
    weights = {i.name: i for i in qdq.prepared.proto.graph.initializer}
    return apply_fallbacks(qdq.proto, fallbacks, weights)


def configuration_at(table: CalibrationTable, step: int) -> dict[str, str]:
    """The fallbacks measured at one step of a table's trace (layer -> precision)."""
    doc = table.settings.get(SETTINGS_KEY) or {}
    trace = doc.get("trace") or []
    if not 0 <= step < len(trace):
        raise QuantvizError(f"The search has no step {step} (it has {len(trace)}).")
    return {lay: str(doc.get("precision", FLOAT)) for lay in trace[step]["fallbacks"]}


REVIEW_NOTE = "mixed precision"  # the start of the note a configuration applied to a review leaves on each tensor
_REVIEW_NOTE_RE = re.compile(rf"^{REVIEW_NOTE} \((?P<target>.*), (?P<where>step \d+|final configuration)\): out of int8")


def review_with_configuration(review: Any, mixed: Mapping[str, Any], step: int | None = None) -> tuple[Any, list[str]]:
    """The review (quantviz.review.Review) with one configuration of a search applied: the output
    tensor of each layer out of int8 at `step` of the trace (the final configuration when None) kept
    in float, with a note saying so. Tensors a configuration applied before marked (their note starts
    with REVIEW_NOTE) are released first, so clicking another step replaces the previous one. A review
    has no int16: an int16 fallback is kept in float there, and the note says int16 was searched.
    Returns the new review and the tensors it keeps in float for the search."""
    tensors: Mapping[str, str] = mixed.get("layer_tensors") or {}
    precision = str(mixed.get("precision", FLOAT))
    if step is None:
        layers = list((mixed.get("fallbacks") or {}).keys())
        where = "final configuration"
    else:
        trace = mixed.get("trace") or []
        if not 0 <= step < len(trace):
            raise QuantvizError(f"The search has no step {step} (it has {len(trace)}).")
        layers = list(trace[step]["fallbacks"])
        where = f"step {step}"
    out = review
    for name, choice in review.choices.items():
        if choice.note.startswith(REVIEW_NOTE):
            out = out.with_choice(name, float_kept=False, note="")
    marked: list[str] = []
    note = f"{REVIEW_NOTE} ({mixed.get('target', '')}, {where}): out of int8" + (
        ", int16 in the search" if precision == INT16 else ""
    )
    for layer in layers:
        t = tensors.get(layer)
        if t is None or t in marked:
            continue
        out = out.with_choice(t, float_kept=True, note=note)
        marked.append(t)
    return out, marked


def applied_in_review(review: Any, mixed: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """What a review (quantviz.review.Review) holds of this search, read back from the notes
    review_with_configuration leaves: where the configuration came from ("step 3", "final
    configuration"; None when none of this search's is applied) and the layers of the search whose
    output tensors the review keeps in float for it, in the search's layer order."""
    tensors: Mapping[str, str] = mixed.get("layer_tensors") or {}
    target = str(mixed.get("target", ""))
    where: str | None = None
    kept: set[str] = set()
    for name, choice in review.choices.items():
        m = _REVIEW_NOTE_RE.match(choice.note)
        if m is None or not choice.float_kept or m["target"] != target:
            continue
        where = m["where"]
        kept.add(name)
    return where, [layer for layer, t in tensors.items() if t in kept]
