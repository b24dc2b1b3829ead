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
copies of each layer output); metrics are reduced to sums (quantviz.metrics) before the next batch.
layer_error() recomputes one layer's isolated error with a pruned isolated model (only the float
nodes that layer needs), for the app when a threshold is overridden.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper

from quantviz.calib import MethodConfig
from quantviz.collect import effective_batch_size
from quantviz.config import DEFAULT_BATCH_SIZE
from quantviz.data import Batch, CalibrationSource
from quantviz.errors import CancelledError, QuantvizError
from quantviz.limits import DATA_ARRAY_BYTES, DATA_TOTAL_BYTES
from quantviz.metrics import ErrorAccumulator, ErrorFigures
from quantviz.model import LoadedModel
from quantviz.outputs import OutputFigures, OutputJudge, output_kind
from quantviz.qdq import PreparedModel, QdqBuild, build
from quantviz.safeio import read_npy, read_npz
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (samples done, samples in all)
Cancel = Callable[[], bool]

ISOLATED_SUFFIX = "::qv_isolated"
ISOLATED_PREFIX = "qv_isolated::"
OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # onnxruntime's name for a graph output feeding its Q
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MODEL_OUTPUT_ROW = "(model output)"


@dataclass(frozen=True)
class LayerSpec:
    """One analysed layer: node name and op, its float output tensor, and where each version lives.

    accumulated_tensor: the dequantized output in the QDQ model; isolated_tensor: the dequantized
    output of the layer's isolated copy in the isolated model.
    """

    name: str
    op_type: str
    output_tensor: str
    accumulated_tensor: str
    isolated_tensor: str
    quantized_inputs: tuple[str, ...]


@dataclass(frozen=True)
class LayerError:
    layer: str
    op_type: str
    output_tensor: str
    isolated: ErrorFigures
    accumulated: ErrorFigures


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


@dataclass(frozen=True)
class AnalysisPlan:
    """The two models an analysis runs, built once per (model, table)."""

    qdq: QdqBuild
    layers: tuple[LayerSpec, ...]
    isolated: onnx.ModelProto
    accumulated: onnx.ModelProto
    model_outputs: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Building the isolated and accumulated models from the QDQ model


def _index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for o in node.output:
            if o:
                producer[o] = node
        for i in node.input:
            if i:
                consumers.setdefault(i, []).append(node)
    return producer, consumers


def _float_name(name: str, float_tensors: set[str]) -> str:
    """The float-model name of a QDQ-model tensor (onnxruntime renames graph outputs it quantizes)."""
    if name not in float_tensors and name.endswith(OUTPUT_SUFFIX) and name[: -len(OUTPUT_SUFFIX)] in float_tensors:
        return name[: -len(OUTPUT_SUFFIX)]
    return name


def find_layers(qdq: QdqBuild) -> list[LayerSpec]:
    """The quantized layers: QDQ-model nodes (not Q/DQ) whose first output goes through a Q/DQ pair."""
    graph = qdq.proto.graph
    producer, consumers = _index(graph)
    float_graph = qdq.prepared.proto.graph
    float_tensors = {o for n in float_graph.node for o in n.output if o} | {i.name for i in float_graph.input}
    float_ops = {n.name: n.op_type for n in float_graph.node}
    inits = {i.name for i in graph.initializer}
    layers: list[LayerSpec] = []
    for node in graph.node:
        if node.op_type in QDQ_OPS or node.name not in float_ops or not node.output or not node.output[0]:
            continue
        q = next((c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None)
        dq = next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None) if q is not None else None
        float_out = False
        if dq is None:
            # an int8 layer whose output the engine profile leaves in float (TensorRT, ncnn: a Conv whose
            # reader is not an int8 op): quantized inputs and weights, float output; still a layer
            weight_dq = any(
                producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" and producer[i].input[0] in inits
                for i in node.input[1:2]
            )
            if not weight_dq:
                continue
            float_out = True
        quantized_inputs = []
        for i in node.input:
            p = producer.get(i)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in inits:
                quantized_inputs.append(
                    _float_name(producer[p.input[0]].input[0], float_tensors) if p.input[0] in producer else i
                )
        out = _float_name(node.output[0], float_tensors)
        acc = node.output[0] if float_out or dq is None else dq.output[0]
        layers.append(LayerSpec(node.name, node.op_type, out, acc, out + ISOLATED_SUFFIX, tuple(quantized_inputs)))
    return layers


def _copy_node(node: onnx.NodeProto, inputs: Sequence[str], outputs: Sequence[str], name: str) -> onnx.NodeProto:
    new = onnx.NodeProto()
    new.CopyFrom(node)
    del new.input[:]
    new.input.extend(inputs)
    del new.output[:]
    new.output.extend(outputs)
    new.name = name
    return new


def _isolated_copy(
    spec: LayerSpec,
    qdq_graph: onnx.GraphProto,
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    qdq_inits: dict[str, onnx.TensorProto],
    float_tensors: set[str],
    float_inits: dict[str, onnx.TensorProto],
) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes of one layer's isolated copy and the QDQ-model initializers they use (to be prefixed)."""
    node = next(n for n in qdq_graph.node if n.name == spec.name)
    tag = ISOLATED_SUFFIX + "/" + spec.name
    nodes: list[onnx.NodeProto] = []
    used: set[str] = set()

    def init_ref(name: str) -> str:
        if not name:
            return name
        if name in qdq_inits:
            f = float_inits.get(name)
            if f is not None and f == qdq_inits[name]:
                return name
            used.add(name)
            return ISOLATED_PREFIX + name
        return name

    inputs: list[str] = []
    for k, i in enumerate(node.input):
        p = producer.get(i) if i else None
        if p is None or p.op_type != "DequantizeLinear":
            inputs.append(init_ref(i) if i in qdq_inits else _float_name(i, float_tensors))
            continue
        src = p.input[0]
        new_out = f"{i}{tag}/{k}"
        if src in qdq_inits:  # a quantized weight or bias: the same DequantizeLinear on the same int8/int32 data
            nodes.append(_copy_node(p, [init_ref(x) for x in p.input], [new_out], f"{p.name}{tag}/{k}"))
        else:
            q = producer.get(src)
            if q is None or q.op_type != "QuantizeLinear":
                raise QuantvizError(f"Unexpected QDQ structure at the input '{i}' of layer '{spec.name}'.")
            x = _float_name(q.input[0], float_tensors)
            q_out = f"{src}{tag}/{k}"
            nodes.append(_copy_node(q, [x, *[init_ref(v) for v in q.input[1:]]], [q_out], f"{q.name}{tag}/{k}"))
            nodes.append(_copy_node(p, [q_out, *[init_ref(v) for v in p.input[1:]]], [new_out], f"{p.name}{tag}/{k}"))
        inputs.append(new_out)
    raw = node.output[0] + tag + "/raw"
    q = next((c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None)
    dq = next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None) if q is not None else None
    if q is None or dq is None:  # the layer's output stays float (find_layers)
        raw = spec.isolated_tensor
    outputs = [raw] + [f"{o}{tag}/out{j}" if o else "" for j, o in enumerate(node.output[1:], 1)]
    nodes.append(_copy_node(node, inputs, outputs, spec.name + tag))
    if q is None or dq is None:
        return nodes, used
    nodes.append(_copy_node(q, [raw, *[init_ref(v) for v in q.input[1:]]], [raw + "/q"], q.name + tag))
    nodes.append(_copy_node(dq, [raw + "/q", *[init_ref(v) for v in dq.input[1:]]], [spec.isolated_tensor], dq.name + tag))
    return nodes, used


def _prune(graph: onnx.GraphProto, keep_outputs: Iterable[str]) -> None:
    """Drop nodes and initializers that none of keep_outputs depends on."""
    producer = {o: n for n in graph.node for o in n.output if o}
    needed: set[str] = set()
    stack = list(keep_outputs)
    live_nodes: set[int] = set()
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        n = producer.get(t)
        if n is not None and id(n) not in live_nodes:
            live_nodes.add(id(n))
            stack.extend(i for i in n.input if i)
    kept = [n for n in graph.node if id(n) in live_nodes]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _value_info(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def isolated_model(qdq: QdqBuild, layers: Sequence[LayerSpec], prune: bool = False) -> onnx.ModelProto:
    """The float model plus each layer's isolated quantized copy; outputs: float and isolated layer
    outputs, then the model's own outputs."""
    prepared: PreparedModel = qdq.prepared
    out = onnx.ModelProto()
    out.CopyFrom(prepared.proto)
    del out.opset_import[:]
    out.opset_import.extend(qdq.proto.opset_import)  # the quantizer may have raised the opset
    out.ir_version = max(out.ir_version, qdq.proto.ir_version)
    g = out.graph
    qgraph = qdq.proto.graph
    producer, consumers = _index(qgraph)
    qdq_inits = {i.name: i for i in qgraph.initializer}
    float_inits = {i.name: i for i in g.initializer}
    float_tensors = {o for n in g.node for o in n.output if o} | {i.name for i in g.input}
    used: set[str] = set()
    for spec in layers:
        nodes, u = _isolated_copy(spec, qgraph, producer, consumers, qdq_inits, float_tensors, float_inits)
        g.node.extend(nodes)
        used |= u
    for name in sorted(used):
        t = onnx.TensorProto()
        t.CopyFrom(qdq_inits[name])
        t.name = ISOLATED_PREFIX + name
        g.initializer.append(t)
    model_outputs = [o.name for o in prepared.proto.graph.output]
    elem = prepared.float_types
    del g.output[:]
    names: list[str] = []
    for spec in layers:
        for n in (spec.output_tensor, spec.isolated_tensor):
            if n not in names:
                names.append(n)
    names += [o for o in model_outputs if o not in names]
    for n in names:
        g.output.append(_value_info(n, elem.get(_float_of(n), onnx.TensorProto.FLOAT)))
    if prune:
        _prune(g, names)
    return out


def _float_of(name: str) -> str:
    """The float tensor an isolated output stands for."""
    return name[: -len(ISOLATED_SUFFIX)] if name.endswith(ISOLATED_SUFFIX) else name


def accumulated_model(qdq: QdqBuild, layers: Sequence[LayerSpec]) -> onnx.ModelProto:
    """The QDQ model with each layer's dequantized output exposed, then the model outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq.proto)
    g = out.graph
    model_outputs = [o.name for o in g.output]
    elem = qdq.prepared.float_types
    del g.output[:]
    names: list[str] = []
    for spec in layers:
        if spec.accumulated_tensor not in names:
            names.append(spec.accumulated_tensor)
    names += [o for o in model_outputs if o not in names]
    for n in names:
        g.output.append(_value_info(n, elem.get(n, onnx.TensorProto.FLOAT)))
    return out


def plan(
    model: LoadedModel,
    table: CalibrationTable,
    *,
    per_channel: bool = True,
    float_nodes: Iterable[str] = frozenset(),
    only_layers: Iterable[str] | None = None,
) -> AnalysisPlan:
    """Build the QDQ model once and derive the isolated and accumulated models from it."""
    qdq = build(model, table, per_channel=per_channel, float_nodes=float_nodes)
    layers = find_layers(qdq)
    if only_layers is not None:
        wanted = set(only_layers)
        layers = [s for s in layers if s.name in wanted]
    return AnalysisPlan(
        qdq=qdq,
        layers=tuple(layers),
        isolated=isolated_model(qdq, layers, prune=only_layers is not None),
        accumulated=accumulated_model(qdq, layers),
        model_outputs=tuple(o.name for o in qdq.prepared.proto.graph.output),
    )


# ---------------------------------------------------------------------------------------------
# Running


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Basic optimizations only: Q and DQ nodes then run as the ONNX spec defines them. At the extended
    # level onnxruntime 1.31's QDQ fusions rewrite the isolated model wrongly (on digits_cnn the first
    # Conv's isolated copy came out 2.45 away from float where the same Q/DQ computed by hand is 0.56
    # away), so isolated and accumulated would disagree at the first layer.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantvizError(f"onnxruntime cannot run the quantized model: {first}") from exc


def _run(sess: ort.InferenceSession, names: list[str], batch: dict[str, npt.NDArray], done: int) -> dict[str, npt.NDArray]:
    feed = {i.name: batch[i.name] for i in sess.get_inputs()}
    try:
        values = sess.run(names, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantvizError(f"onnxruntime could not run the model on the batch starting at sample {done}: {first}") from exc
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


def _is_classifier(value: npt.NDArray) -> bool:
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

    def update(self, ref: npt.NDArray, test: npt.NDArray, labels: npt.NDArray | None) -> None:
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
# (one sample a batch at the least). Peak memory is then about this figure plus onnxruntime's working
# buffers of one batch and the models themselves.
ANALYZE_BATCH_BYTES = 256 * 2**20


def budget_batch_size(per_sample_bytes: int, requested: int, budget: int | None = None) -> int:
    """The largest batch (at most `requested`, at least 1) whose exposed layer outputs, per_sample_bytes
    a sample, fit `budget` bytes (ANALYZE_BATCH_BYTES by default)."""
    limit = ANALYZE_BATCH_BYTES if budget is None else budget
    return max(1, min(requested, limit // max(per_sample_bytes, 1)))


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
) -> LayerReport:
    """Per-layer isolated and accumulated error and end-to-end figures over (at most) `samples` samples.

    labels: one class index per sample of the source (e.g. digits_eval.npz "label"), aligned with
    the source's order; accuracy is reported for [N, classes] outputs when given.
    """
    if samples is not None and samples < 1:
        raise QuantvizError(f"The number of samples must be at least 1, not {samples}.")
    if batch_size < 1:
        raise QuantvizError(f"The batch size must be at least 1, not {batch_size}.")
    p = plan(model, table, per_channel=per_channel, float_nodes=float_nodes)
    total = source.num_samples if samples is None else min(samples, source.num_samples)
    label_arr = _check_labels(labels, total)
    iso_sess, acc_sess = _session(p.isolated), _session(p.accumulated)
    iso_names = [o.name for o in iso_sess.get_outputs()]
    acc_names = [o.name for o in acc_sess.get_outputs()]
    iso_acc = {s.name: ErrorAccumulator() for s in p.layers}
    acc_acc = {s.name: ErrorAccumulator() for s in p.layers}
    out_acc = {o: _OutputAccumulator(p.qdq.prepared.proto, o, _clip_range(p.qdq, table, o)) for o in p.model_outputs}
    bs = effective_batch_size(model, batch_size, source)
    free = bs > 1 and effective_batch_size(model, 1, source) == 1
    done = 0
    if progress:
        progress(0, total)

    def batches() -> Iterator[Batch]:
        # a free batch size: the first sample runs alone, its outputs' bytes set the size of the rest
        # (budget_batch_size), so one batch's layer outputs stay under ANALYZE_BATCH_BYTES
        if not free:
            yield from source.batches(bs, total)
            return
        yield from source.batches(1, min(1, total))
        yield from source.batches(size, total, first=1)

    size = bs
    for batch in batches():
        if cancel is not None and cancel():
            raise CancelledError(f"Analysis cancelled after {done} of {total} samples.")
        n = source.samples_in(batch)
        f = _run(iso_sess, iso_names, batch, done)
        q = _run(acc_sess, acc_names, batch, done)
        if free and done == 0:
            size = budget_batch_size(sum(np.asarray(v).nbytes for v in (*f.values(), *q.values())) // max(n, 1), bs)
        for s in p.layers:
            ref = f[s.output_tensor]
            iso_acc[s.name].update(ref, f[s.isolated_tensor])
            acc_acc[s.name].update(ref, q[s.accumulated_tensor])
        lab = label_arr[done : done + n] if label_arr is not None else None
        for o, a in out_acc.items():
            a.update(np.asarray(f[o]), np.asarray(q[o]), lab)
        del f, q
        done += n
        if progress:
            progress(done, total)
    if done == 0:
        raise QuantvizError("The data holds no samples to analyse.")
    layers = tuple(
        LayerError(s.name, s.op_type, s.output_tensor, iso_acc[s.name].result(), acc_acc[s.name].result()) for s in p.layers
    )
    outputs = tuple(a.result(o, label_arr is not None) for o, a in out_acc.items())
    return LayerReport(
        model_name=model.name,
        model_sha256=model.sha256,
        samples=done,
        batch_size=size,
        data_description=source.description,
        synthetic=source.synthetic,
        per_channel=per_channel,
        symmetric=p.qdq.symmetric,
        table_settings=dict(table.settings),
        thresholds=_thresholds(p.qdq, table),
        layers=layers,
        outputs=outputs,
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
    done = 0
    for batch in source.batches(effective_batch_size(model, batch_size, source), total):
        if cancel is not None and cancel():
            raise CancelledError(f"Analysis cancelled after {done} of {total} samples.")
        f = _run(sess, names, batch, done)
        acc.update(f[spec.output_tensor], f[spec.isolated_tensor])
        done += source.samples_in(batch)
    return acc.result()


DEFAULT_LABEL_KEY = "label"


def read_labels(spec: str | Path) -> npt.NDArray:
    """Labels from "FILE.npz:key", "FILE.npz" (key "label") or "FILE.npy": one class index per sample."""
    text = str(spec)
    path, key = Path(text), None
    if not path.exists() and ":" in text:
        head, _, tail = text.rpartition(":")
        path, key = Path(head), tail
    if not path.exists():
        raise QuantvizError(f"The labels file '{path}' does not exist.")
    what = f"The labels file '{path.name}'"
    if path.suffix.lower() == ".npy":
        return read_npy(path, what, array_bytes=DATA_ARRAY_BYTES)
    name = key or DEFAULT_LABEL_KEY
    arrays = read_npz(path, what, array_bytes=DATA_ARRAY_BYTES, total_bytes=DATA_TOTAL_BYTES, only=lambda k: k == name)
    if name not in arrays:
        raise QuantvizError(f"'{path.name}' has no array '{name}'; give FILE.npz:KEY with KEY one of its arrays.")
    return arrays[name]


def default_labels(data: str | Path | bytes) -> npt.NDArray | None:
    """The "label" array of a data .npz (a path, or an upload's bytes) when it has one
    (digits_eval.npz does), else None."""
    if not isinstance(data, bytes):
        path = Path(str(data))
        if path.suffix.lower() != ".npz" or not path.is_file():
            return None
    try:
        arrays = read_npz(
            data, "the calibration data", array_bytes=DATA_ARRAY_BYTES, total_bytes=DATA_TOTAL_BYTES,
            only=lambda k: k == DEFAULT_LABEL_KEY,
        )  # fmt: skip
    except QuantvizError:
        return None  # not an .npz (a .npy upload), or unreadable: the data reader says why
    return arrays.get(DEFAULT_LABEL_KEY)


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
) -> tuple[dict[str, MethodPick], int]:
    """Per layer, the method whose isolated error is lowest, and the samples each analysis ran.

    Analyses the model once per method (that method on every tensor) on at most `samples` samples and
    picks per layer with compare_methods (ties keep the earlier method: list the default first).
    quantviz.review.apply_method_picks puts the picks in a review (the app and the CLI alike).
    """
    from quantviz.table import calibrate_model

    methods = list(dict.fromkeys(methods))
    if not methods:
        raise QuantvizError("Give at least one method to compare.")
    config = config or MethodConfig()
    reports: dict[str, LayerReport] = {}
    for i, m in enumerate(methods):

        def step(done: int, total: int, i: int = i) -> None:
            if progress is not None:
                progress(i * total + done, len(methods) * total)

        table = calibrate_model(model, stats, m, config, per_channel=per_channel, profile=profile, clip_outputs=clip_outputs)
        reports[m] = analyze(model, table, source, samples=samples, progress=step, per_channel=per_channel)
    return compare_methods(reports), reports[methods[0]].samples


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
) -> tuple[CalibrationTable, dict[str, MethodPick]]:
    """The table with, on each layer's output tensor, the method whose isolated error is lowest.

    best_method_picks, then the picks put in a review of the first method (apply_method_picks: Conv
    outputs fused with their activation keep taking the activation's scale, quantviz.table.apply_model,
    so their own pick is not applied) and its table built. Each entry picked carries extra["best"]
    with every method's cosine.
    """
    from quantviz.profiles import DEFAULT_PROFILE
    from quantviz.review import Review, apply_method_picks, build_table, fused_tensors
    from quantviz.table import apply_model, calibrate_model

    methods = list(dict.fromkeys(methods))
    config = config or MethodConfig()
    picks, samples_run = best_method_picks(
        model, stats, source, methods, config, samples=samples, per_channel=per_channel, progress=progress,
        profile=profile, clip_outputs=clip_outputs,
    )  # fmt: skip
    fused = fused_tensors(calibrate_model(model, stats, methods[0], config, per_channel, profile=profile))
    start = Review(default_method=methods[0], config=config, profile=profile or DEFAULT_PROFILE, clip_outputs=clip_outputs)
    applied = apply_method_picks(start, {p.output_tensor: p.method for p in picks.values()}, stats, fused=fused)
    table = build_table(stats, applied.review)
    by_tensor = {p.output_tensor: p for p in picks.values()}
    tensors = {
        n: replace(e, extra={**e.extra, "best": {"layer": by_tensor[n].layer, "cosines": by_tensor[n].cosines}})
        if n in by_tensor and n not in fused
        else e
        for n, e in table.tensors.items()
    }
    settings = {**table.settings, "method": "best", "best": {"candidates": methods, "samples": samples_run}}
    return apply_model(replace(table, tensors=tensors, settings=settings), model, per_channel), picks
