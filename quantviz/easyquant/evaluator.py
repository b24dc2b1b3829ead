"""EQ's real evaluate: the walk over the folded model in onnxruntime and the layer cosines.

Memory (bounded by the model's width, not its number of layers): the walk holds, for the capped
samples, the activations still needed downstream (float and quantized copies: twice the model's
largest live set) and, for the group searched, its input (float, as searched, fake-quantized) and
each layer's float output. Sessions are built without onnxruntime's memory arena and dropped once
their node has run (the walk's nodes) or their group is fixed (the searched layers), so nothing is
kept per layer: keeping them held every session's largest buffers and thread pool (PP-OCRv4 rec: over
8.7 GB and growing before, 0.84 GB peak for the whole process after, bench/README.md).

Cosine per sample: <a, b> / (|a| |b|) over the flattened output (0/0 = 1: both all zero; one all-zero
side = 0), then the mean over samples. A channel's cosine is the mean over samples of the cosine of
its slice; when a channel holds one value per sample (Gemm outputs) the cosine is taken over the
samples' values of that channel instead (a single value has a cosine of +-1 only).

The real evaluate (ModelEvaluator) walks the BatchNorm-folded model node by node in onnxruntime on
the first min(N, max_samples) samples, holding only the tensors still needed (streaming, one layer at
a time). Every node runs as a single-node model; the quantized network is simulated by fake-quantizing
(numpy) each float tensor that has a table scale where it is consumed, and the weights of
Conv/Gemm/MatMul with their current per-channel scales (the QDQ model of quantviz.qdq quantizes the
same tensors; its int32 bias rounding is left out: biases stay float). A fused Conv->Relu quantizes
once, at the activation's output. The searched layer runs alone as a model whose input X and weight W
are graph INPUTS, so candidates are fed without rebuilding anything. The accumulated input changes
after every layer, so rebuilding a QDQ model (quantviz.qdq.build_qdq_model) per layer would cost a
quantizer run per layer: the walk gives the same inputs in one pass. Rounding is half to even,
symmetric int8 in -127..127 (quantviz.fakequant's convention, TensorRT's range).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper

from quantviz.config import INT8_MAX
from quantviz.data import CalibrationSource
from quantviz.easyquant.search import (
    EQConfig,
    EQLayer,
    Evaluation,
)
from quantviz.errors import QuantvizError
from quantviz.fold import constant_values
from quantviz.graph import producers
from quantviz.qdq import PreparedModel
from quantviz.runtime import new_session, session_options
from quantviz.weights import WEIGHT_OPS, WeightQuant

# The output-channel axis of a Conv ([N, C, ...]) and a Gemm ([N, C]) output.
OUTPUT_CHANNEL_AXIS = 1
# Ops with a graph attribute cannot run as a single node here.
SUBGRAPH_OPS = ("If", "Loop", "Scan")

FloatArray = npt.NDArray[np.floating]


def fake_quantize_fast(x: npt.ArrayLike, scale: float | npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Symmetric int8 fake quantization, s * clip(round_half_even(x / s), -127, 127), as float32.

    The same values as quantviz.fakequant.fake_quantize(x, scale) (float64 arithmetic; a test checks
    it), computed in place: about 5 times faster on the hot path of the input search.
    """
    s = np.asarray(scale, dtype=np.float64)
    q = np.divide(np.asarray(x), s, dtype=np.float64)
    if np.ndim(q) == 0:  # a 0-d input (e.g. a sample rate): numpy gave a scalar, the steps below need an array
        q = np.array(q, dtype=np.float64)
    np.rint(q, out=q)
    np.clip(q, -INT8_MAX, INT8_MAX, out=q)
    q *= s
    out: npt.NDArray[np.float32] = q.astype(np.float32)
    return out


def _cosine(dot: npt.NDArray[np.float64], aa: npt.NDArray[np.float64], bb: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """dot / (|a| |b|) from the sums, with 0/0 = 1 (both all zero) and one all-zero side = 0."""
    norm = np.sqrt(aa * bb)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = dot / norm
    return np.clip(np.where((aa == 0) & (bb == 0), 1.0, np.where(norm == 0, 0.0, cos)), -1.0, 1.0)  # as quantviz.metrics


def _nc_view(o: np.ndarray) -> np.ndarray:
    """An output as (samples N, output channels C, values per channel D)."""
    a = np.asarray(o)
    if a.ndim < 2:
        return a.reshape(a.shape[0], 1, 1)
    return a.reshape(a.shape[0], a.shape[OUTPUT_CHANNEL_AXIS], -1)


def _sums(a: np.ndarray, b: np.ndarray) -> npt.NDArray[np.float64]:
    """sum over the last axis of a * b per (sample, channel), accumulated in float64."""
    out: npt.NDArray[np.float64] = np.einsum("ncd,ncd->nc", a, b, dtype=np.float64)
    return out


@dataclass(frozen=True, eq=False)
class _Reference:
    """A layer's float output as (N, C, D) with its squared norms per (sample, channel), computed once."""

    o: np.ndarray
    aa: npt.NDArray[np.float64]

    @classmethod
    def of(cls, o: FloatArray) -> _Reference:
        a = _nc_view(o)
        return cls(a, _sums(a, a))


def layer_cosines(o: FloatArray, o_hat: FloatArray) -> Evaluation:
    """Mean over samples of cos(O, O^), and each output channel's cosine (module doc)."""
    return _compare(_Reference.of(o), o_hat)


def _compare(ref: _Reference, o_hat: FloatArray) -> Evaluation:
    """One pass: the (sample, channel) sums give the per-sample cosines (summed over channels) and
    the per-channel ones (mean over samples of each slice's cosine; over the samples' values when a
    channel holds one value per sample)."""
    b = _nc_view(o_hat)
    dot, bb = _sums(ref.o, b), _sums(b, b)
    cos = float(_cosine(dot.sum(axis=1), ref.aa.sum(axis=1), bb.sum(axis=1)).mean())
    if ref.o.shape[2] == 1:
        ch = _cosine(dot.sum(axis=0), ref.aa.sum(axis=0), bb.sum(axis=0))
    else:
        ch = _cosine(dot, ref.aa, bb).mean(axis=0)
    return Evaluation(cos, ch)


def _np_to_onnx(dtype: np.dtype[Any]) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


class _SingleModel:
    """A few nodes of the folded model as their own onnxruntime model; runtime inputs are graph
    inputs typed from the first arrays fed (any batch size), constants ride along as initializers."""

    def __init__(
        self,
        prepared: PreparedModel,
        nodes: Sequence[onnx.NodeProto],
        inputs: Sequence[str],
        outputs: Sequence[str],
        consts: Mapping[str, np.ndarray],
        arena: bool = False,
    ) -> None:
        self._prepared = prepared
        self._arena = arena
        self._nodes = list(nodes)
        self.inputs = list(dict.fromkeys(inputs))
        self.outputs = list(outputs)
        used = {i for n in self._nodes for i in n.input if i}
        self._inits = [
            onnx.numpy_helper.from_array(np.asarray(consts[i]), i) for i in sorted(used - set(self.inputs)) if i in consts
        ]
        self._session: ort.InferenceSession | None = None

    def _build(self, feed: Mapping[str, np.ndarray]) -> ort.InferenceSession:
        src = self._prepared.proto
        graph = helper.make_graph(
            self._nodes,
            "quantviz_eq_node",
            [helper.make_tensor_value_info(i, _np_to_onnx(feed[i].dtype), None) for i in self.inputs],
            [helper.make_empty_tensor_value_info(o) for o in self.outputs],
            self._inits,
        )
        model = helper.make_model(graph, opset_imports=list(src.opset_import), ir_version=src.ir_version)
        model.functions.extend(src.functions)
        so = session_options()
        # the walk's sessions run once: no memory arena (it would keep their largest buffers for as long
        # as they live); a searched layer's runs ~54 times, then is dropped (module doc, "Memory")
        so.enable_cpu_mem_arena = self._arena
        try:
            return new_session(model, so)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            names = ", ".join(n.name for n in self._nodes)
            raise QuantvizError(
                f"EQ could not run node {names} on its own in onnxruntime: {str(exc).strip().splitlines()[0]}"
            ) from exc

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._session is None:
            self._session = self._build(feed)
        return [np.asarray(v) for v in self._session.run(self.outputs, {k: feed[k] for k in self.inputs})]


class LayerRunner:
    """A searched layer alone (with its fused activation): run(x, w) -> output, X and W graph inputs."""

    def __init__(self, prepared: PreparedModel, layer: EQLayer, consts: Mapping[str, np.ndarray]) -> None:
        nodes = {n.name: n for n in prepared.proto.graph.node}
        chain = [nodes[layer.name]] + ([nodes[layer.activation]] if layer.activation else [])
        self.layer = layer
        self._model = _SingleModel(prepared, chain, [layer.input, layer.weight], [layer.output], consts, arena=True)

    def run(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return self._model.run({self.layer.input: x, self.layer.weight: w})[0]


def _broadcast(scales: npt.ArrayLike, axis: int | None, ndim: int) -> npt.NDArray[np.float64]:
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    if axis is None or s.size == 1:
        return s.reshape((1,) * ndim) if s.size == 1 else s
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape)


@dataclass
class _GroupCache:
    """The data of the layers reading one tensor, for the capped samples (freed when the walk moves on)."""

    tensor: str
    x_float: np.ndarray
    x_input: np.ndarray
    refs: dict[str, _Reference] = field(default_factory=dict)
    xq_scale: float | None = None
    xq: np.ndarray | None = None


class ModelEvaluator:
    """EasyQuant's evaluate on a real model: a streaming walk of the folded model (module doc).

    Call start_round() before each round and fix() when a group of layers has its scales (eq_search's
    on_round / on_fixed); __call__(layer, s_x, s_w) returns the layer's Evaluation on the capped samples.
    """

    def __init__(
        self,
        prepared: PreparedModel,
        layers: Sequence[EQLayer],
        scales: Mapping[str, float],
        weights: Mapping[str, WeightQuant],
        source: CalibrationSource,
        config: EQConfig,
        batch_size: int,
        fused_pre_activations: frozenset[str] = frozenset(),
    ) -> None:
        self.prepared = prepared
        self.layers = {layer.name: layer for layer in layers}
        self.config = config
        self.source = source
        self.samples = min(source.num_samples, config.max_samples)
        self.batch_size = max(1, min(batch_size, self.samples))
        self.accumulated = config.mode == "accumulated"
        graph = prepared.proto.graph
        self._consts = constant_values(graph)
        self._weights = dict(weights)
        self._scales = dict(scales)
        self._w_scales = {n: np.asarray(w.scales, dtype=np.float32) for n, w in weights.items()}
        self._fused_pre = fused_pre_activations
        self._graph_inputs = [i.name for i in graph.input if i.name not in self._consts]
        bad = [
            n.name
            for n in graph.node
            if n.op_type in SUBGRAPH_OPS
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
        ]
        self._nodes = self._needed_nodes(list(graph.node), {layer.input for layer in layers})
        bad = [n for n in bad if n in {m.name for m in self._nodes}]
        if bad:
            raise QuantvizError(
                f"EQ walks the model node by node and cannot run control-flow node(s) {', '.join(bad)} (If/Loop/Scan) that way."
            )
        self._runners: dict[str, _SingleModel] = {}
        self._layer_runners: dict[str, LayerRunner] = {}
        self._cache: _GroupCache | None = None
        self._float: dict[str, list[np.ndarray]] = {}
        self._quant: dict[str, list[np.ndarray]] = {}
        self._remaining: dict[str, int] = {}
        self._pos = 0

    @staticmethod
    def _needed_nodes(nodes: list[onnx.NodeProto], targets: set[str]) -> list[onnx.NodeProto]:
        """The nodes that lead to the searched layers' inputs, in graph order."""
        producer = producers(nodes)
        needed: set[str] = set()
        stack = [t for t in targets if t in producer]
        while stack:
            node = producer[stack.pop()]
            if node.name in needed:
                continue
            needed.add(node.name)
            stack.extend(i for i in node.input if i in producer)
        return [n for n in nodes if n.name in needed]

    # -- the walk ---------------------------------------------------------------------------

    def start_round(self, round_index: int = 0) -> None:
        """Restart the walk: read the capped samples again (in order) and forget every activation."""
        self._float, self._quant, self._cache, self._pos = {}, {}, None, 0
        self._remaining = {}
        for node in self._nodes:
            for i in self._runtime_inputs(node):
                self._remaining[i] = self._remaining.get(i, 0) + 1
        for x in {layer.input for layer in self.layers.values()}:
            self._remaining[x] = self._remaining.get(x, 0) + 1
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in self._graph_inputs}
        for batch in self.source.batches(self.batch_size, self.samples):
            for name in self._graph_inputs:
                if name not in batch:
                    raise QuantvizError(f"The calibration data has no array for model input '{name}'.")
                chunks[name].append(np.asarray(batch[name]))
        for name, arrays in chunks.items():
            self._float[name] = arrays
            if self.accumulated:
                self._quant[name] = arrays

    def _runtime_inputs(self, node: onnx.NodeProto) -> set[str]:
        return {i for i in node.input if i and i not in self._consts}

    def _release(self, name: str) -> None:
        left = self._remaining.get(name, 0) - 1
        self._remaining[name] = left
        if left <= 0:
            self._float.pop(name, None)
            self._quant.pop(name, None)

    def _fq_input(self, name: str, consumer: onnx.NodeProto, chunk: np.ndarray) -> np.ndarray:
        """A tensor as a quantized consumer reads it: fake-quantized with its current scale."""
        s = self._scales.get(name)
        if s is None or not np.issubdtype(chunk.dtype, np.floating):
            return chunk
        if name in self._fused_pre and consumer.op_type in ("Relu", "Clip"):
            return chunk  # fused Conv->ReLU: quantized once, at the activation's output
        return fake_quantize_fast(chunk, s).astype(chunk.dtype, copy=False)

    def _runner(self, node: onnx.NodeProto) -> _SingleModel:
        r = self._runners.get(node.name)
        if r is None:
            weight = self._weight_input(node)
            runtime = [i for i in node.input if i and (i not in self._consts or i == weight)]
            r = _SingleModel(self.prepared, [node], runtime, [o for o in node.output if o], self._consts)
            self._runners[node.name] = r
        return r

    def _weight_input(self, node: onnx.NodeProto) -> str | None:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in self._weights:
            return str(node.input[1])
        return None

    def _quantized_weight(self, name: str) -> np.ndarray:
        w = self._consts[name]
        wq = self._weights[name]
        return fake_quantize_fast(w, _broadcast(self._w_scales[name], wq.axis, w.ndim)).astype(w.dtype, copy=False)

    def _step(self) -> None:
        node = self._nodes[self._pos]
        self._pos += 1
        runner = self._runner(node)
        weight = self._weight_input(node)
        states = [(self._float, False)] + ([(self._quant, True)] if self.accumulated else [])
        for state, quantized in states:
            outs: list[list[np.ndarray]] = [[] for _ in runner.outputs]
            fixed = {weight: self._quantized_weight(weight) if quantized else self._consts[weight]} if weight else {}
            for k in range(self._chunks()):
                feed: dict[str, np.ndarray] = dict(fixed)
                for name in runner.inputs:
                    if name not in fixed:
                        chunk = state[name][k]
                        feed[name] = self._fq_input(name, node, chunk) if quantized else chunk
                for j, value in enumerate(runner.run(feed)):
                    outs[j].append(value)
            for name, values in zip(runner.outputs, outs, strict=True):
                if self._remaining.get(name, 0) > 0:  # outputs nothing later reads are dropped at once
                    state[name] = values
        for name in self._runtime_inputs(node):
            self._release(name)
        self._runners.pop(node.name, None)  # a node runs once per round: its session is not kept

    def _chunks(self) -> int:
        return -(-self.samples // self.batch_size)

    def _advance_to(self, tensor: str) -> None:
        while tensor not in self._float:
            if self._pos >= len(self._nodes):
                raise QuantvizError(f"EQ's walk of the model never produced tensor '{tensor}'.")
            self._step()

    def layer_inputs(self, layer: EQLayer) -> tuple[np.ndarray, np.ndarray]:
        """(float input, input the search quantizes) of a layer for the capped samples, in sample order."""
        self._advance_to(layer.input)
        x_float = np.concatenate(self._float[layer.input], axis=0)
        x_input = np.concatenate(self._quant[layer.input], axis=0) if self.accumulated else x_float
        return x_float, x_input

    def fix(self, layers: Sequence[EQLayer], input_scale: float, weight_scales: Mapping[str, npt.NDArray[np.float32]]) -> None:
        """Commit a group's scales: the walk quantizes with them from now on."""
        if not layers:
            return
        self._scales[layers[0].input] = float(input_scale)
        for layer in layers:
            self._w_scales[layer.weight] = np.asarray(weight_scales[layer.name], dtype=np.float32)
        self._cache = None
        for layer in layers:  # the group is done for this round: its sessions go
            self._layer_runners.pop(layer.name, None)
        self._release(layers[0].input)

    # -- evaluate -----------------------------------------------------------------------------

    def layer_runner(self, layer: EQLayer) -> LayerRunner:
        r = self._layer_runners.get(layer.name)
        if r is None:
            r = LayerRunner(self.prepared, layer, self._consts)
            self._layer_runners[layer.name] = r
        return r

    def _group(self, layer: EQLayer) -> _GroupCache:
        if self._cache is None or self._cache.tensor != layer.input:
            self._cache = None
            x_float, x_input = self.layer_inputs(layer)
            self._cache = _GroupCache(layer.input, x_float, x_input)
        cache = self._cache
        if layer.name not in cache.refs:
            o = self.layer_runner(layer).run(cache.x_float, self._consts[layer.weight])
            cache.refs[layer.name] = _Reference.of(o)
        return cache

    def __call__(self, layer: EQLayer, input_scale: float, weight_scales: npt.NDArray[np.float32]) -> Evaluation:
        cache = self._group(layer)
        if cache.xq_scale != input_scale:
            cache.xq = fake_quantize_fast(cache.x_input, input_scale).astype(cache.x_input.dtype, copy=False)
            cache.xq_scale = input_scale
        w = self._consts[layer.weight]
        wq = fake_quantize_fast(w, _broadcast(weight_scales, self._weights[layer.weight].axis, w.ndim)).astype(
            w.dtype, copy=False
        )
        assert cache.xq is not None
        o_hat = self.layer_runner(layer).run(cache.xq, wq)
        ev = _compare(cache.refs[layer.name], o_hat)
        return ev if np.asarray(weight_scales).size > 1 else Evaluation(ev.cosine)
