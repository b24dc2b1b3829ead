"""Per-layer quantization error, isolated and accumulated, and end to end (ALGORITHMS.md "Error measures").

A layer is a node of the QDQ model (quantviz.qdq) whose output goes through a QuantizeLinear /
DequantizeLinear pair carrying the table's scale: Conv, Gemm, MatMul, Add, Concat, Relu, Softmax, ...
and also ops onnxruntime leaves in float between quantized tensors (MaxPool, Flatten: they read a
Q/DQ pair and their consumer quantizes their output), since an engine stores their output in int8 too.
A node whose quantized weight and inputs feed an output the engine profile writes in float (TensorRT,
ncnn: a Conv read by a float op) is a layer too; its output is compared as it comes out, unquantized.
Its output tensor is compared with the float model's:

- accumulated (graphwise): the whole model quantized, so everything up to the layer is quantized:
  the error an engine really shows at that tensor;
- isolated (layerwise): only that layer quantized (its inputs quantized from FLOAT values with the
  table's scales, its weights and bias quantized, its output quantized), everything upstream float:
  the sensitivity of that layer alone.
- end to end: the final outputs of the fully quantized model against float: cosine, SNR, MSE, top-1
  agreement, and accuracy of both when labels are given.

How it runs (cost per batch: one run of the QDQ model, one run of a model about twice the float one):
- accumulated: ONE run of the full QDQ model with each layer's dequantized output exposed as a graph
  output, compared with the float values of the same tensors;
- isolated: ONE run of an "isolated" model: the float model plus, for every layer, a copy of that
  layer's quantized node taken from the QDQ model (its weight and bias DequantizeLinear nodes and
  their int8/int32 initializers, the scales and zero points of its input and output Q/DQ pairs)
  whose activation inputs are re-quantized from the FLOAT tensors. The same run yields the float
  references. So every layer's isolated error costs one extra node evaluation (plus its Q/DQ), not
  one QDQ model per layer (which would cost one quantize_static call and one full pass per layer),
  and the quantization of each layer is exactly onnxruntime's (same int8 weights, int32 bias,
  scales) in both figures: at the first layer isolated and accumulated agree.
Measured on the 2-core test machine (shared, so roughly): digits_resnet (308 layers), per batch of 32
samples: float model 0.24 s, QDQ model 0.53 s, isolated model 1.0 s; building the plan (one
quantize_static call) about 1-3 s; 540 samples in about 40 s. One QDQ model per layer would add 308
quantize_static calls and 308 passes over the data. digits_cnn: 540 samples in under 1 s.
Memory: one batch of inputs and the activations of that batch (float, isolated and accumulated
copies of each layer output, kept under ANALYZE_BATCH_BYTES); metrics are reduced to sums
(quantviz.metrics) before the next batch. When ONE sample's exposed layer outputs exceed
ANALYZE_BATCH_BYTES (estimated before anything runs, from the float model's shapes:
quantviz.layer_runs), the layers are split into consecutive runs of layers whose outputs fit it, each
run analysed over every batch with pruned isolated and accumulated models (only the nodes its
outputs need), whose sessions are freed before the next run; the end-to-end figures come from the
last run. Peak memory is then about the float and QDQ models' working set for one sample (onnxruntime's
buffers of a run, the weights) + ANALYZE_BATCH_BYTES, whatever the number of layers (a single layer
whose own outputs exceed the budget makes a run alone, so its outputs are the bound there). The
batches are the same as in one run: a sample whose outputs exceed the budget makes batches of one
sample there too (budget_batch_size), so the report is the same, float for float. The time it costs:
each run recomputes the float and QDQ prefixes its layers need, so k runs cost up to k passes of both
models (about k/2 on a chain) plus k session creations, instead of one (bench/README.md has figures).
The models are planned in quantviz.sensitivity_plan; this module runs them. With a Ray cluster
(analyze(cluster=...)), the isolated copies run in Ray tasks, a run of layers each
(quantviz.distributed.IsolatedFanOut, isolated_errors), on the same batches as this process's run.
layer_error() recomputes one layer's isolated error with a pruned isolated model (only the float
nodes that layer needs), for the app when a threshold is overridden.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from quantviz.calib import MethodConfig
from quantviz.collect import effective_batch_size
from quantviz.config import DEFAULT_BATCH_SIZE
from quantviz.data import CalibrationSource, Cancel, Progress, batch_loop
from quantviz.errors import QuantvizError
from quantviz.layer_runs import LayerRun, layer_runs
from quantviz.metrics import ErrorAccumulator, ErrorFigures
from quantviz.model import LoadedModel
from quantviz.outputs import OutputFigures, OutputJudge, output_kind
from quantviz.progress import Report, Step
from quantviz.qdq import QdqBuild
from quantviz.runtime import first_line, new_session, session_options
from quantviz.sensitivity_plan import PARTS, AnalysisPlan, LayerSpec, accumulated_model, isolated_model, isolated_outputs, plan
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable

if TYPE_CHECKING:
    from quantviz.distributed import IsolatedFanOut

log = logging.getLogger(__name__)


MODEL_OUTPUT_ROW = "(model output)"


@dataclass(frozen=True)
class ErrorParts:
    """The isolated error split by what is quantized: only the input activations, only the weights and
    bias, only the output (None: the layer quantizes nothing of that part, e.g. a Relu's weights).

    Each part is measured with the two others left in float, on the same float inputs as the isolated
    figure (which has all three quantized). Quantization noises of the parts are nearly independent,
    so their noise powers about add up: 1/SNR(all) ~ sum over parts of 1/SNR(part)."""

    input: ErrorFigures | None
    weights: ErrorFigures | None
    output: ErrorFigures | None

    def items(self) -> list[tuple[str, ErrorFigures]]:
        """(part, figures) for the parts the layer quantizes, in PARTS order."""
        return [(k, f) for k, f in zip(PARTS, (self.input, self.weights, self.output), strict=True) if f is not None]

    @property
    def worst(self) -> str | None:
        """The part whose error alone is the largest (lowest cosine; ties: the first in PARTS order)."""
        known = [(f.cosine, k) for k, f in self.items() if not math.isnan(f.cosine)]
        if not known:
            return None
        low = min(c for c, _ in known)
        return next(k for c, k in known if c == low)


@dataclass(frozen=True)
class LayerError:
    layer: str
    op_type: str
    output_tensor: str
    isolated: ErrorFigures
    accumulated: ErrorFigures
    parts: ErrorParts | None = None  # analyze(parts=True)


@dataclass(frozen=True)
class OutputError:
    """End-to-end figures for one model output (top-1 and accuracy only for [N, classes] outputs)."""

    output: str
    figures: ErrorFigures
    top1_agreement: float | None = None
    accuracy_float: float | None = None
    accuracy_quantized: float | None = None
    # max / mean abs error, saturated share, decision agreement or cosine across samples (quantviz.outputs)
    detail: OutputFigures | None = None


@dataclass(frozen=True)
class LayerReport:
    """Everything the CSV, the HTML report and the app show about one analysis."""

    model_name: str
    model_sha256: str
    samples: int
    batch_size: int
    data_description: str
    synthetic: bool
    per_channel: bool
    symmetric: bool
    table_settings: dict[str, object]
    thresholds: dict[str, tuple[float, float, int]]  # tensor -> (threshold, scale, zero point) placed
    layers: tuple[LayerError, ...]
    outputs: tuple[OutputError, ...]
    kept_float: dict[str, str] = field(default_factory=dict)
    folded: tuple[str, ...] = ()  # BatchNormalization nodes folded into their Conv

    @property
    def has_labels(self) -> bool:
        return any(o.accuracy_float is not None for o in self.outputs)

    def worst_first(self, mode: str = "isolated") -> list[LayerError]:
        """Layers sorted by cosine, lowest first (NaN last)."""

        def key(le: LayerError) -> float:
            c = (le.isolated if mode == "isolated" else le.accumulated).cosine
            return c if not math.isnan(c) else math.inf

        return sorted(self.layers, key=key)


# ---------------------------------------------------------------------------------------------
# Running


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    so = session_options()
    # Basic optimizations only: Q and DQ nodes then run as the ONNX spec defines them. At the extended
    # level onnxruntime 1.31's QDQ fusions rewrite the isolated model wrongly (on digits_cnn the first
    # Conv's isolated copy came out 2.45 away from float where the same Q/DQ computed by hand is 0.56
    # away), so isolated and accumulated would disagree at the first layer.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        return new_session(proto, so)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise QuantvizError(f"onnxruntime cannot run the quantized model: {first_line(exc)}") from exc


def _run(sess: ort.InferenceSession, names: list[str], batch: dict[str, npt.NDArray[Any]], done: int) -> dict[str, npt.NDArray[Any]]:
    feed = {i.name: batch[i.name] for i in sess.get_inputs()}
    try:
        values = sess.run(names, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise QuantvizError(f"onnxruntime could not run the model on the batch starting at sample {done}: {first_line(exc)}") from exc
    return dict(zip(names, values, strict=True))


def _check_labels(labels: npt.ArrayLike | None, total: int) -> npt.NDArray[np.int64] | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise QuantvizError(
            f"Labels must be one class index per sample (a 1-D array); got shape {list(arr.shape)} of {arr.dtype}."
        )
    if arr.shape[0] < total:
        raise QuantvizError(f"There are {arr.shape[0]} labels for {total} samples: give one label per sample.")
    return arr[:total].astype(np.int64)


def _is_classifier(value: npt.NDArray[Any]) -> bool:
    return value.ndim == 2 and value.shape[1] > 1


class _OutputAccumulator:
    def __init__(self, proto: onnx.ModelProto | None = None, name: str = "", clip_range: tuple[float, float] | None = None) -> None:
        self.proto = proto
        self.name = name
        self.clip_range = clip_range
        self.judge: OutputJudge | None = None
        self.errors = ErrorAccumulator()
        self.classifier = True
        self.agree = 0
        self.correct_float = 0
        self.correct_quant = 0
        self.n = 0

    def update(self, ref: npt.NDArray[Any], test: npt.NDArray[Any], labels: npt.NDArray[Any] | None) -> None:
        self.errors.update(ref, test)
        if self.proto is not None:
            if self.judge is None:
                kind, op, axis = output_kind(self.proto, self.name, ref)
                self.judge = OutputJudge(kind, op, axis, self.clip_range)
            self.judge.update(ref, test)
        self.classifier = self.classifier and _is_classifier(ref)
        if not self.classifier:
            return
        top_f = np.argmax(ref, axis=1)
        top_q = np.argmax(test, axis=1)
        self.agree += int(np.sum(top_f == top_q))
        if labels is not None:
            self.correct_float += int(np.sum(top_f == labels))
            self.correct_quant += int(np.sum(top_q == labels))
        self.n += ref.shape[0]

    def result(self, name: str, labelled: bool) -> OutputError:
        figures = self.errors.result()
        detail = self.judge.result() if self.judge is not None else None
        if not self.classifier or self.n == 0:
            return OutputError(name, figures, detail=detail)
        return OutputError(
            name,
            figures,
            top1_agreement=self.agree / self.n,
            accuracy_float=self.correct_float / self.n if labelled else None,
            accuracy_quantized=self.correct_quant / self.n if labelled else None,
            detail=detail,
        )


def _clip_range(qdq: QdqBuild, table: CalibrationTable, name: str) -> tuple[float, float] | None:
    """The [min, max] an output tensor is quantized to (None: it stays float)."""
    if name not in qdq.scales or name not in table.tensors:
        return None
    s, z = qdq.scales[name]
    lo, hi = (-128, 127) if qdq.symmetric else (0, 255)
    return (s * (lo - z), s * (hi - z))


def _thresholds(qdq: QdqBuild, table: CalibrationTable) -> dict[str, tuple[float, float, int]]:
    return {n: (table.tensors[n].threshold, s, z) for n, (s, z) in qdq.scales.items() if n in table.tensors}


# The layer outputs one analysed batch holds (float, isolated and accumulated copies of every layer's
# output) stay under this many bytes, whatever the number of layers: the batch shrinks on wide models
# (one sample a batch at the least), and when one sample's outputs exceed it the layers are analysed in
# runs whose outputs fit it (quantviz.layer_runs). Peak memory is then about this figure plus
# onnxruntime's working buffers of one batch and the models themselves.
ANALYZE_BATCH_BYTES = 256 * 2**20


def budget_batch_size(per_sample_bytes: int, requested: int, budget: int | None = None) -> int:
    """The largest batch (at most `requested`, at least 1) whose exposed layer outputs, per_sample_bytes
    a sample, fit `budget` bytes (ANALYZE_BATCH_BYTES by default)."""
    limit = ANALYZE_BATCH_BYTES if budget is None else budget
    return max(1, min(requested, limit // max(per_sample_bytes, 1)))


def _isolated_update(
    layers: Sequence[LayerSpec],
    f: Mapping[str, npt.NDArray[Any]],
    iso_acc: Mapping[str, ErrorAccumulator],
    part_acc: Mapping[tuple[str, str], ErrorAccumulator],
) -> None:
    """One batch of the isolated model: each layer's isolated output and parts against its float output."""
    for s in layers:
        ref = s.as_engine(f[s.output_tensor])
        iso_acc[s.name].update(ref, s.as_engine(f[s.isolated_tensor]))
        for t in s.part_tensors:
            if t:
                part_acc[s.name, t].update(ref, s.as_engine(f[t]))


def _parts_result(part_acc: Mapping[tuple[str, str], ErrorAccumulator], name: str, tensors: tuple[str, str, str]) -> ErrorParts:
    got = [part_acc[name, t].result() if t else None for t in tensors]
    return ErrorParts(got[0], got[1], got[2])


def isolated_errors(
    model: LoadedModel,
    table: CalibrationTable,
    source: CalibrationSource,
    layers: Sequence[str],
    total: int,
    batch_size: int,
    rest: int | None,
    *,
    per_channel: bool = True,
    float_nodes: Iterable[str] = frozenset(),
    parts: bool = True,
) -> dict[str, tuple[ErrorFigures, ErrorParts | None]]:
    """The isolated figures (and parts) of some layers, exactly as analyze computes them: the same
    samples in the same batches (batch_size, or with rest the first sample alone and then batches of
    rest, as analyze's free batch size runs), from an isolated model holding only these layers' copies
    (a Ray task of quantviz.distributed runs one run of layers)."""
    p = plan(model, table, per_channel=per_channel, float_nodes=float_nodes, only_layers=layers, parts=parts)
    missing = sorted(set(layers) - {s.name for s in p.layers})
    if missing:
        raise QuantvizError(f"'{missing[0]}' is not a quantized layer of this model with this table.")
    sess = _session(p.isolated)
    names = [o.name for o in sess.get_outputs()]
    iso_acc = {s.name: ErrorAccumulator() for s in p.layers}
    part_acc = {(s.name, t): ErrorAccumulator() for s in p.layers for t in s.part_tensors if t}
    loop = batch_loop(source, batch_size, total, "Analysis", then=(lambda: rest) if rest is not None else None)
    for done, batch, _ in loop:
        _isolated_update(p.layers, _run(sess, names, batch, done), iso_acc, part_acc)
    return {s.name: (iso_acc[s.name].result(), _parts_result(part_acc, s.name, s.part_tensors) if parts else None) for s in p.layers}


def analyze(
    model: LoadedModel,
    table: CalibrationTable,
    source: CalibrationSource,
    samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    labels: npt.ArrayLike | None = None,
    *,
    per_channel: bool = True,
    float_nodes: Iterable[str] = frozenset(),
    parts: bool = True,
    cluster: Any = None,
    model_source: Any = None,
) -> LayerReport:
    """Per-layer isolated and accumulated error and end-to-end figures over (at most) `samples` samples.

    labels: one class index per sample of the source (e.g. digits_eval.npz "label"), aligned with
    the source's order; accuracy is reported for [N, classes] outputs when given. parts: each layer's
    error decomposition too (ErrorParts: up to three more node evaluations per layer in the same run
    of the isolated model, reading the float activations it already computes).
    cluster (a quantviz.distributed.ClusterConfig): the isolated figures (and parts) are computed by
    Ray tasks, one run of layers each, the workers opening model_source (the model's path or bytes) and
    the source's data; this process runs the float and QDQ models (accumulated and end-to-end figures,
    one model run). The same samples in the same batches everywhere: the report is the same, float
    for float. progress then counts samples over all passes (this one and every task's).
    """
    if samples is not None and samples < 1:
        raise QuantvizError(f"The number of samples must be at least 1, not {samples}.")
    if batch_size < 1:
        raise QuantvizError(f"The batch size must be at least 1, not {batch_size}.")
    fan: IsolatedFanOut | None = None
    if cluster is not None:
        from quantviz.distributed import IsolatedFanOut

        if model_source is None:
            raise QuantvizError("Analysing on a cluster needs the model's path or bytes for the workers.")
    p = plan(model, table, per_channel=per_channel, float_nodes=float_nodes, parts=parts, copies=cluster is None)
    total = source.num_samples if samples is None else min(samples, source.num_samples)
    label_arr = _check_labels(labels, total)
    accs = _Accumulators.of(p, table, parts)
    bs = effective_batch_size(model, batch_size, source)
    # a free batch size: the first sample runs alone, its outputs' bytes set the size of the rest
    # (budget_batch_size), so one batch's layer outputs stay under ANALYZE_BATCH_BYTES
    free = bs > 1 and effective_batch_size(model, 1, source) == 1
    if cluster is not None:
        fan = IsolatedFanOut(model, model_source, table, source, [s.name for s in p.layers], cluster)
    size = bs
    # on a cluster this process runs the float model only: the bytes the isolated model's outputs would
    # take come from the float values they stand for, so the batches stay those of one process
    iso_outputs = isolated_outputs(p.layers, p.model_outputs)

    def rest_size() -> int:
        return size  # set from the first batch's outputs below

    def start() -> None:
        if fan is not None:
            fan.start(total, bs, size if free else None, per_channel=per_channel, float_nodes=float_nodes, parts=parts)

    def step(done: int, _total: int) -> None:
        if progress is None:
            return
        if fan is None:
            progress(done, total)
        else:
            progress(done + fan.finished() * total, total * (1 + fan.runs))

    ran = 0
    if not free:
        start()
    try:
        loop = batch_loop(source, bs, total, "Analysis", step, cancel, then=rest_size if free else None)
        head = next(loop, None)
        # the first batch's shapes tell what one batch's outputs take (quantviz.layer_runs): over the
        # budget, the layers are analysed in runs (on a cluster this process runs no isolated copies)
        runs = layer_runs(p, head[1] if head is not None and fan is None else None, ANALYZE_BATCH_BYTES)
        if len(runs) > 1:
            del loop, head
            # one sample's outputs exceed the budget: a free batch size would be 1 (budget_batch_size),
            # so every batch is one sample here too, and a fixed one stays: the batches are the same
            size = 1 if free else bs
            ran = _analyze_in_runs(p, runs, source, total, size, accs, label_arr, progress, cancel)
            return _report(model, table, source, p, per_channel, ran, size, accs, label_arr is not None)
        iso_sess, acc_sess = _session(p.isolated), _session(p.accumulated)
        iso_names = [o.name for o in iso_sess.get_outputs()]
        acc_names = [o.name for o in acc_sess.get_outputs()]
        for done, batch, n in itertools.chain([head] if head is not None else [], loop):
            f = _run(iso_sess, iso_names, batch, done)
            q = _run(acc_sess, acc_names, batch, done)
            if free and done == 0:
                iso_bytes = sum(np.asarray(v).nbytes for v in f.values()) if fan is None else sum(f[t].nbytes for _, t in iso_outputs)
                size = budget_batch_size((iso_bytes + sum(np.asarray(v).nbytes for v in q.values())) // max(n, 1), bs)
                start()
            accs.update(p.layers, f, q, p.model_outputs, label_arr[done : done + n] if label_arr is not None else None, fan is None)
            del f, q
            ran = done + n
        if ran == 0:
            raise QuantvizError("The data holds no samples to analyse.")
        if fan is not None:
            accs.isolated = fan.wait(lambda: step(ran, total), cancel)
    except BaseException:
        if fan is not None:
            fan.cancel()
        raise
    return _report(model, table, source, p, per_channel, ran, size, accs, label_arr is not None)


@dataclass
class _Accumulators:
    """Everything an analysis sums over its batches, per layer (isolated, accumulated, parts) and per
    model output (end to end); isolated: the isolated figures computed elsewhere (the Ray fan-out)."""

    iso: dict[str, ErrorAccumulator]
    acc: dict[str, ErrorAccumulator]
    parts: dict[tuple[str, str], ErrorAccumulator]
    out: dict[str, _OutputAccumulator]
    with_parts: bool
    isolated: dict[str, tuple[ErrorFigures, ErrorParts | None]] | None = None

    @staticmethod
    def of(p: AnalysisPlan, table: CalibrationTable, parts: bool) -> _Accumulators:
        return _Accumulators(
            iso={s.name: ErrorAccumulator() for s in p.layers},
            acc={s.name: ErrorAccumulator() for s in p.layers},
            parts={(s.name, t): ErrorAccumulator() for s in p.layers for t in s.part_tensors if t},
            out={o: _OutputAccumulator(p.qdq.prepared.proto, o, _clip_range(p.qdq, table, o)) for o in p.model_outputs},
            with_parts=parts,
        )

    def update(
        self,
        layers: Sequence[LayerSpec],
        f: Mapping[str, npt.NDArray[Any]],
        q: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        labels: npt.NDArray[Any] | None,
        isolated: bool = True,
    ) -> None:
        """One batch: f the isolated model's outputs (float references, isolated copies and parts, unless
        isolated is False), q the accumulated model's; outputs: the model outputs among them."""
        if isolated:
            _isolated_update(layers, f, self.iso, self.parts)
        for s in layers:
            self.acc[s.name].update(s.as_engine(f[s.output_tensor]), s.as_engine(q[s.accumulated_tensor]))
        for o in outputs:
            self.out[o].update(np.asarray(f[o]), np.asarray(q[o]), labels)

    def layer(self, s: LayerSpec) -> LayerError:
        if self.isolated is not None:
            iso, prt = self.isolated[s.name]
        else:
            iso, prt = self.iso[s.name].result(), _parts_result(self.parts, s.name, s.part_tensors) if self.with_parts else None
        return LayerError(s.name, s.op_type, s.output_tensor, iso, self.acc[s.name].result(), prt)


def _analyze_in_runs(
    p: AnalysisPlan,
    runs: Sequence[LayerRun],
    source: CalibrationSource,
    total: int,
    size: int,
    accs: _Accumulators,
    labels: npt.NDArray[np.int64] | None,
    progress: Progress | None,
    cancel: Cancel | None,
) -> int:
    """Every run of layers over the same batches (batches of `size`), one after the other, each with
    pruned isolated and accumulated models (only the nodes its outputs need) freed before the next;
    progress counts samples over all runs. Returns the samples analysed."""
    log.info("Analysis in %d runs of layers (exposed outputs a batch: at most %d bytes, ~%d each).",
             len(runs), max(r.bytes for r in runs), sum(r.bytes for r in runs) // len(runs))  # fmt: skip
    ran = 0
    for k, run in enumerate(runs):

        def step(done: int, _total: int, k: int = k) -> None:
            if progress is not None:
                progress(k * total + done, len(runs) * total)

        iso_sess = _session(isolated_model(p.qdq, run.layers, prune=True, with_outputs=run.outputs))
        acc_sess = _session(accumulated_model(p.qdq, run.layers, prune=True, with_outputs=run.outputs))
        try:
            iso_names = [o.name for o in iso_sess.get_outputs()]
            acc_names = [o.name for o in acc_sess.get_outputs()]
            outputs = p.model_outputs if run.outputs else ()
            ran = 0
            for done, batch, n in batch_loop(source, size, total, "Analysis", step, cancel):
                f = _run(iso_sess, iso_names, batch, done)
                q = _run(acc_sess, acc_names, batch, done)
                accs.update(run.layers, f, q, outputs, labels[done : done + n] if labels is not None else None)
                del f, q
                ran = done + n
        finally:
            del iso_sess, acc_sess
            gc.collect()  # the next run's sessions take this run's place, not add to it
        if ran == 0:
            raise QuantvizError("The data holds no samples to analyse.")
    return ran


def _report(
    model: LoadedModel,
    table: CalibrationTable,
    source: CalibrationSource,
    p: AnalysisPlan,
    per_channel: bool,
    ran: int,
    size: int,
    accs: _Accumulators,
    labelled: bool,
) -> LayerReport:
    return LayerReport(
        model_name=model.name,
        model_sha256=model.sha256,
        samples=ran,
        batch_size=size,
        data_description=source.description,
        synthetic=source.synthetic,
        per_channel=per_channel,
        symmetric=p.qdq.symmetric,
        table_settings=dict(table.settings),
        thresholds=_thresholds(p.qdq, table),
        layers=tuple(accs.layer(s) for s in p.layers),
        outputs=tuple(a.result(o, labelled) for o, a in accs.out.items()),
        kept_float=dict(p.qdq.kept_float),
        folded=tuple(fp.batchnorm for fp in p.qdq.prepared.fold.folded),
    )


def layer_error(
    model: LoadedModel,
    table: CalibrationTable,
    layer_name: str,
    source: CalibrationSource,
    samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    per_channel: bool = True,
    cancel: Cancel | None = None,
) -> ErrorFigures:
    """The isolated error of one layer (node name, as in LayerReport.layers) with this table.

    Builds the QDQ model (one quantize_static call) and a pruned isolated model holding only the
    float nodes this layer depends on and its quantized copy; one pass over the samples.
    """
    p = plan(model, table, per_channel=per_channel, only_layers=[layer_name])
    if not p.layers:
        raise QuantvizError(f"'{layer_name}' is not a quantized layer of this model (see the analysis table for their names).")
    spec = p.layers[0]
    sess = _session(p.isolated)
    names = [spec.output_tensor, spec.isolated_tensor]
    total = source.num_samples if samples is None else min(samples, source.num_samples)
    acc = ErrorAccumulator()
    for done, batch, _ in batch_loop(source, effective_batch_size(model, batch_size, source), total, "Analysis", cancel=cancel):
        f = _run(sess, names, batch, done)
        acc.update(spec.as_engine(f[spec.output_tensor]), spec.as_engine(f[spec.isolated_tensor]))
    return acc.result()


# ---------------------------------------------------------------------------------------------
# Comparing methods layer by layer


@dataclass(frozen=True)
class MethodPick:
    """The method whose table gives a layer its best cosine, with every method's figure."""

    layer: str
    output_tensor: str
    method: str
    cosine: float
    cosines: dict[str, float]
    note: str = ""  # set when the whole-model check replaced the per-layer pick (best_method_picks)


def compare_methods(
    reports: dict[str, LayerReport], mode: str = "isolated", tolerance: float = 1e-9
) -> dict[str, MethodPick]:
    """Per layer, the method with the highest cosine among analyses of one table per method.

    reports: method -> analysis of the table with that method everywhere (same model, same samples).
    mode "isolated" (the default) judges each layer by its own error: only its input, weight and
    output scales matter there, so a layer's pick does not depend on the other layers' methods; the
    layer's output tensor is the one whose method is picked. Ties within `tolerance` keep the first
    method in `reports`' order (put the default first). Layers missing from some report (kept float
    there) are judged on the others.
    """
    if mode not in ("isolated", "accumulated"):
        raise QuantvizError(f"mode must be 'isolated' or 'accumulated', not '{mode}'.")
    figures: dict[str, dict[str, float]] = {}
    tensors: dict[str, str] = {}
    for method, report in reports.items():
        for le in report.layers:
            c = (le.isolated if mode == "isolated" else le.accumulated).cosine
            figures.setdefault(le.layer, {})[method] = c
            tensors.setdefault(le.layer, le.output_tensor)
    picks: dict[str, MethodPick] = {}
    for layer, by_method in figures.items():
        best_m, best_c = None, -math.inf
        for m, c in by_method.items():
            if not math.isnan(c) and c > best_c + tolerance:
                best_m, best_c = m, c
        if best_m is not None:
            picks[layer] = MethodPick(layer, tensors[layer], best_m, best_c, dict(by_method))
    return picks


BEST_CANDIDATES = ("kl", "minmax", "ema", "percentile", "mse", "aciq")
BEST_SAMPLES = 256


def best_method_picks(
    model: LoadedModel,
    stats: CalibrationStats,
    source: CalibrationSource,
    methods: Sequence[str] = BEST_CANDIDATES,
    config: MethodConfig | None = None,
    *,
    samples: int | None = BEST_SAMPLES,
    per_channel: bool = True,
    progress: Progress | None = None,
    profile: str | None = None,
    clip_outputs: bool = False,
    steps: Report | None = None,
    cancel: Cancel | None = None,
    cluster: Any = None,
    model_source: Any = None,
) -> tuple[dict[str, MethodPick], int]:
    """Per layer, the method whose isolated error is lowest, and the samples each analysis ran.

    Analyses the model once per method (that method on every tensor) on at most `samples` samples and
    picks per layer with compare_methods (ties keep the earlier method: list the default first).
    Then the whole-model check: the table of those picks is analysed once more on the same samples,
    and when one method alone gives a higher end-to-end cosine (mean over graph outputs), that method
    takes every layer, each pick carrying a note that says so.
    quantviz.review.apply_method_picks puts the picks in a review (the app and the CLI alike).
    steps: Steps "Analysis with <method> (i of n)" counting samples over all the analyses; cancel:
    asked before each batch (CancelledError, nothing returned).
    cluster (a quantviz.distributed.ClusterConfig) runs the analyses as Ray tasks, one per method, the
    workers opening model_source (the model's path or bytes) and the source's data: the same reports.
    """
    from quantviz.calib import METHOD_LABELS
    from quantviz.table import calibrate_model

    methods = list(dict.fromkeys(methods))
    if not methods:
        raise QuantvizError("Give at least one method to compare.")
    config = config or MethodConfig()
    reports: dict[str, LayerReport] = {}
    if cluster is not None:
        from quantviz.distributed import analyses_on_cluster

        if model_source is None:
            raise QuantvizError("Comparing methods on a cluster needs the model's path or bytes for the workers.")
        reports = analyses_on_cluster(
            model, model_source, stats, source, methods, config, cluster, samples=samples, per_channel=per_channel,
            profile=profile, clip_outputs=clip_outputs, progress=progress, cancel=cancel,
        )  # fmt: skip
        return compare_methods(reports), reports[methods[0]].samples
    for i, m in enumerate(methods):
        phase = f"Analysis with {METHOD_LABELS.get(m, m)} ({i + 1} of {len(methods)})"

        def step(done: int, total: int, i: int = i, phase: str = phase) -> None:
            if progress is not None:
                progress(i * total + done, len(methods) * total)
            if steps is not None:
                steps(Step(phase, i * total + done, len(methods) * total, "samples"))

        table = calibrate_model(model, stats, m, config, per_channel=per_channel, profile=profile, clip_outputs=clip_outputs)
        reports[m] = analyze(model, table, source, samples=samples, progress=step, cancel=cancel, per_channel=per_channel, parts=False)
    picks = compare_methods(reports)
    if len({p.method for p in picks.values()}) > 1:
        # the whole-model check: isolated picks can compound (each clips a little more than its neighbours'
        # methods) into an end-to-end error worse than one method everywhere, as on issue 8's file-type
        # classifier (mixed 0.983, KL alone 0.996): then the best single method takes every layer
        mixed = _picks_table(model, stats, picks, methods, config, per_channel, profile, clip_outputs)
        mixed_cos = _end_to_end(analyze(model, mixed, source, samples=samples, cancel=cancel, per_channel=per_channel, parts=False))
        single = max(methods, key=lambda m: _end_to_end(reports[m]))
        single_cos = _end_to_end(reports[single])
        if single_cos > mixed_cos + WHOLE_MODEL_TOLERANCE:
            note = (
                f"{single} on every layer: its end-to-end cosine {single_cos:.6f} beats the per-layer picks' "
                f"{mixed_cos:.6f} on the same {reports[single].samples} samples"
            )
            picks = {k: replace(p, method=single, cosine=p.cosines[single], note=note) for k, p in picks.items()}
    return picks, reports[methods[0]].samples


# a single method replaces the picks only when it wins end to end by more than this: on the few samples
# best-method analyses (4 in the sweep), smaller gaps are noise (PP-OCR's classifier: percentile 1.000000
# against the picks' 0.999064 on 4 calibration samples, then 0.985 against 0.999 on the evaluation set)
WHOLE_MODEL_TOLERANCE = 0.005


def _end_to_end(report: LayerReport) -> float:
    """The mean end-to-end cosine over the graph outputs (nan counts as the worst)."""
    values = [o.figures.cosine for o in report.outputs]
    return float(np.mean(values)) if values and not any(math.isnan(v) for v in values) else -math.inf


def _picks_table(
    model: LoadedModel,
    stats: CalibrationStats,
    picks: Mapping[str, MethodPick],
    methods: Sequence[str],
    config: MethodConfig,
    per_channel: bool,
    profile: str | None,
    clip_outputs: bool,
) -> CalibrationTable:
    """The table with each pick's method on its layer's output tensor, the first method elsewhere
    (apply_method_picks: Conv outputs fused with their activation keep the activation's scale)."""
    from quantviz.profiles import DEFAULT_PROFILE
    from quantviz.review import Review, apply_method_picks, build_table, fused_tensors
    from quantviz.table import apply_model, calibrate_model

    fused = fused_tensors(calibrate_model(model, stats, methods[0], config, per_channel, profile=profile))
    default = next((p.method for p in picks.values() if p.note), methods[0])  # the whole-model check's method: everywhere
    start = Review(default_method=default, config=config, profile=profile or DEFAULT_PROFILE, clip_outputs=clip_outputs)
    applied = apply_method_picks(start, {p.output_tensor: p.method for p in picks.values()}, stats, fused=fused)
    return apply_model(build_table(stats, applied.review), model, per_channel)


def best_method_table(
    model: LoadedModel,
    stats: CalibrationStats,
    source: CalibrationSource,
    methods: Sequence[str] = BEST_CANDIDATES,
    config: MethodConfig | None = None,
    *,
    samples: int | None = BEST_SAMPLES,
    per_channel: bool = True,
    progress: Progress | None = None,
    profile: str | None = None,
    clip_outputs: bool = False,
    cluster: Any = None,
    model_source: Any = None,
) -> tuple[CalibrationTable, dict[str, MethodPick]]:
    """The table with, on each layer's output tensor, the method whose isolated error is lowest.

    best_method_picks, then the picks put in a review of the first method (apply_method_picks: Conv
    outputs fused with their activation keep taking the activation's scale, quantviz.table.apply_model,
    so their own pick is not applied) and its table built. Each entry picked carries extra["best"]
    with every method's cosine; settings["best"]["whole_model"] says when the whole-model check of
    best_method_picks put one method everywhere.
    """
    from quantviz.review import fused_tensors
    from quantviz.table import apply_model, calibrate_model

    methods = list(dict.fromkeys(methods))
    config = config or MethodConfig()
    picks, samples_run = best_method_picks(
        model, stats, source, methods, config, samples=samples, per_channel=per_channel, progress=progress,
        profile=profile, clip_outputs=clip_outputs, cluster=cluster, model_source=model_source,
    )  # fmt: skip
    fused = fused_tensors(calibrate_model(model, stats, methods[0], config, per_channel, profile=profile))
    table = _picks_table(model, stats, picks, methods, config, per_channel, profile, clip_outputs)
    by_tensor = {p.output_tensor: p for p in picks.values()}
    tensors = {
        n: replace(e, extra={**e.extra, "best": {"layer": by_tensor[n].layer, "cosines": by_tensor[n].cosines}})
        if n in by_tensor and n not in fused
        else e
        for n, e in table.tensors.items()
    }
    note = next((p.note for p in picks.values() if p.note), "")
    settings = {**table.settings, "method": "best", "best": {"candidates": methods, "samples": samples_run, **({"whole_model": note} if note else {})}}
    return apply_model(replace(table, tensors=tensors, settings=settings), model, per_channel), picks
