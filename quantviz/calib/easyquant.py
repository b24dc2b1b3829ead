"""EQ / EasyQuant: search each layer's scales for the best output cosine (Wu et al. 2020).

"EasyQuant: Post-training Quantization via Scale Optimization" (Di Wu, Qi Tang, Yongle Zhao, Ming
Zhang, Ying Fu, Debing Zhang; arXiv 2006.16669), with deepglint's reference
(github.com/deepglint/EasyQuant, tools/scale_fine_tuning.py) and ncnn2table's quantize_EQ.

Start from KL thresholds for activations and per-channel abs-max scales for weights. For every
Conv / Gemm layer l, in the order of the graph (after BatchNormalization folding, weights as the
engine runs them), maximise the mean over the calibration samples of

    cos(O_l, O^_l),   O_l  = layer(X_l, W_l)            (float input, float weights)
                      O^_l = layer(q(X^_l, s_x), q(W_l, s_w))

over candidate scales evenly spaced in [alpha * S, beta * S] (n of them, S the current scale):
first the weight scales s_w (per output channel), then, with the weights fixed, the input
activation scale s_x; R rounds. X^_l is the float input (mode "isolated", as ncnn does) or the
input the already-quantized upstream network produces (mode "accumulated", the paper's and
deepglint's choice, the default). The layer's output is taken after a ReLU-like activation fused
into it (quantviz.fusion), as deepglint measures it and as an engine runs the pair; it is never
quantized itself (its scale belongs to the next layer's input).

How the search goes (eq_search, a pure function over an `evaluate` callable):
- Weights, per output channel: every candidate factor f in linspace(alpha, beta, n) is applied to all
  channels at once (candidate scales linspace(alpha * S_c, beta * S_c, n) for channel c) and one
  evaluation returns the cosine of the whole output and of each output channel's slice; each channel
  keeps the candidate that maximises the cosine of its own slice (deepglint's calcChannelSimilarity;
  output channel c depends on weight channel c only, so the channel searches are independent).
  That combination is evaluated, and the layer keeps whichever of {start, combination, best single
  factor for all channels} has the highest layer cosine (start on ties): the layer cosine never drops.
- Input: the n candidates of s_x with the weights fixed; the best one replaces the current scale only
  if it is strictly better. Layers that read the same tensor (two branches of a block) share its
  scale: their weights are searched one by one, then the input scale maximises the mean of their
  cosines.
- The starting point is always evaluated and only a strictly better candidate replaces it, so the
  result is never worse than the start on the cosine optimised (per layer for the weights; per input
  tensor, the mean over the layers reading it, for the activation scale).

Coarse to fine (the default from COARSE_MIN_N = 25 candidates; EQConfig.exhaustive tries them all,
as the paper does): the n grid candidates are not all run. Every ceil(sqrt(n))-th candidate (and
the last) is evaluated, then the candidates around the best so far at a finer stride (ceil of the
square root of the first), then the neighbours at stride 1: for n = 100, 11 + 4 + 6 = 21 evaluations
instead of 100, and on a unimodal cosine curve the same grid argmax (ties: the lower index, as
np.argmax). The weight search refines each channel around ITS OWN best candidate: one evaluation
moves every channel by the same offset from its own best index (channels are independent), so the
per-channel refinement costs the same 10 evaluations whatever the number of channels. A layer costs
about 2 + 21 + 10 (weights) + 21 (input) = 54 single-layer runs instead of 2 n + 3 = 203: EQ on
PP-OCRv4 rec (404 tensors, 50 samples, n 100, 1 round, 2 cores) goes from 770 s to about 190 s
(bench/README.md).

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

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper

from quantviz.calib.result import Curve, MethodConfig
from quantviz.collect import effective_batch_size
from quantviz.config import INT8_MAX
from quantviz.data import CalibrationSource
from quantviz.errors import QuantvizError
from quantviz.fold import constant_values
from quantviz.fusion import analyse
from quantviz.graph import producers
from quantviz.limits import EQ_ROUNDS_MAX, SEARCH_CANDIDATES_MAX, check_at_most
from quantviz.model import LoadedModel
from quantviz.qdq import PreparedModel, prepare_float_model
from quantviz.runtime import new_session, session_options
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable, calibrate_model, is_finite_entry
from quantviz.weights import WEIGHT_OPS, WeightQuant, weight_scales

log = logging.getLogger(__name__)

EQ_ALPHA = 0.5
EQ_BETA = 2.0
EQ_CANDIDATES = 100
EQ_ROUNDS = 1
EQ_MAX_SAMPLES = 50
EQ_MODES = ("accumulated", "isolated")
# Below this many candidates the search tries them all; from it on, coarse to fine (module doc).
COARSE_MIN_N = 25
EQ_LAYER_OPS = ("Conv", "Gemm")
# The output-channel axis of a Conv ([N, C, ...]) and a Gemm ([N, C]) output.
OUTPUT_CHANNEL_AXIS = 1
# Ops with a graph attribute cannot run as a single node here.
SUBGRAPH_OPS = ("If", "Loop", "Scan")

FloatArray = npt.NDArray[np.floating]
Progress = Callable[[int, int], object]


@dataclass(frozen=True)
class EQConfig:
    """EasyQuant's settings (defaults: the paper's alpha 0.5, beta 2, n 100, R 1, 50 samples).

    mode: "accumulated" (inputs from the quantized upstream network) or "isolated" (float inputs).
    """

    alpha: float = EQ_ALPHA
    beta: float = EQ_BETA
    n: int = EQ_CANDIDATES
    rounds: int = EQ_ROUNDS
    max_samples: int = EQ_MAX_SAMPLES
    mode: str = "accumulated"
    exhaustive: bool = False  # every candidate (the paper's search) instead of coarse to fine

    def __post_init__(self) -> None:
        if not np.isfinite(self.alpha) or self.alpha <= 0:
            raise QuantvizError(
                f"EQ's alpha (the smallest candidate, as a fraction of the start scale) must be above 0, not {self.alpha}."
            )
        if not np.isfinite(self.beta) or self.alpha >= self.beta:
            raise QuantvizError(
                f"EQ's alpha must be smaller than beta (candidates lie in [alpha * S, beta * S]), not alpha {self.alpha} >= beta {self.beta}."
            )
        for name, value, least in (
            ("number of candidates n", self.n, 2),
            ("number of rounds", self.rounds, 1),
            ("sample cap", self.max_samples, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
                raise QuantvizError(f"EQ's {name} must be a whole number of at least {least}, not {value}.")
        check_at_most(self.n, SEARCH_CANDIDATES_MAX, "EQ's number of candidates n is {value}, beyond quantviz's limit of {limit} per search.")
        check_at_most(self.rounds, EQ_ROUNDS_MAX, "EQ's number of rounds is {value}, beyond quantviz's limit of {limit}.")
        if self.mode not in EQ_MODES:
            raise QuantvizError(f"EQ's mode must be one of {', '.join(EQ_MODES)}, not '{self.mode}'.")


@dataclass(frozen=True)
class EQLayer:
    """A layer EQ searches: a Conv/Gemm node, the activation tensor it reads and its weight.

    output: the tensor whose cosine is measured (the fused activation's output, or the node's own);
    activation: the fused ReLU-like node's name ("" when none); channels: number of weight scales.
    """

    name: str
    op_type: str
    input: str
    weight: str
    output: str
    activation: str = ""
    channels: int = 1


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a layer: mean cosine over samples, and per output channel (None: not given)."""

    cosine: float
    channel_cosines: npt.NDArray[np.float64] | None = None


Evaluate = Callable[[EQLayer, float, npt.NDArray[np.float32]], "Evaluation | float"]


@dataclass(frozen=True, eq=False)
class EQStart:
    """A layer's starting scales: the input's (KL) and the weight's per output channel (abs-max)."""

    input_scale: float
    weight_scales: npt.NDArray[np.float32]


@dataclass(frozen=True)
class EQRound:
    """A layer's cosines in one round: at the round's start, after the weight search, after the input search."""

    round: int
    start: float
    weights: float
    input: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class EQLayerResult:
    """What EQ found for one layer, with the trace the UI plots.

    initial_cosine: the layer cosine at the start scales (round 1); cosine: at the final scales, in the
    last round. input_curve: the last round's input search (candidate scale -> mean cosine of the
    layers reading the input); weight_curve: the last round's cosine with one factor for all channels.
    shared_input: the other layers reading the same input tensor (they share its scale).
    """

    layer: EQLayer
    initial_input_scale: float
    initial_weight_scales: npt.NDArray[np.float32]
    initial_cosine: float
    input_scale: float
    weight_scales: npt.NDArray[np.float32]
    cosine: float
    trace: tuple[EQRound, ...]
    input_curve: Curve
    weight_curve: Curve
    shared_input: tuple[str, ...] = ()


@dataclass(frozen=True)
class EQResult:
    """eq_search's result: per layer (by name, in search order) and how many evaluations it took."""

    layers: dict[str, EQLayerResult]
    config: EQConfig
    evaluations: int = 0


def candidate_grid(scale: float | npt.ArrayLike, config: EQConfig) -> npt.NDArray[np.float64]:
    """np.linspace(alpha * S, beta * S, n): shape (n,) for one scale, (n, C) for per-channel scales."""
    s = np.asarray(scale, dtype=np.float64)
    return np.linspace(config.alpha * s, config.beta * s, config.n)


def _as_evaluation(value: Evaluation | float) -> Evaluation:
    return value if isinstance(value, Evaluation) else Evaluation(float(value))


def _groups(layers: Sequence[EQLayer]) -> list[list[EQLayer]]:
    """Layers grouped by the tensor they read, in the order of each group's first layer."""
    out: dict[str, list[EQLayer]] = {}
    for layer in layers:
        out.setdefault(layer.input, []).append(layer)
    return list(out.values())


def search_schedule(n: int, exhaustive: bool = False) -> list[int]:
    """The strides of the coarse-to-fine search over n grid candidates (module doc): [1] (every
    candidate) below COARSE_MIN_N or when exhaustive; else ceil(sqrt(n)), ceil(sqrt of that), 1."""
    if exhaustive or n < COARSE_MIN_N:
        return [1]
    s1 = math.ceil(math.sqrt(n))
    s2 = math.ceil(math.sqrt(s1))
    return [s for s in dict.fromkeys((s1, s2, 1))]


def _best_index(scores: Mapping[int, float]) -> int:
    """The evaluated index with the highest score; ties go to the lowest index (np.argmax's choice)."""
    return max(scores, key=lambda i: (scores[i], -i))


def coarse_to_fine(n: int, score: Callable[[int], float], strides: Sequence[int]) -> dict[int, float]:
    """Evaluate grid indices 0..n-1 coarse to fine: every strides[0]-th index (and the last), then
    around the best so far at each finer stride, never one index twice. Returns index -> score.
    On a unimodal score the best index found is the grid's argmax."""
    scores: dict[int, float] = {}
    for i in sorted(set(range(0, n, strides[0])) | {n - 1}):
        scores[i] = score(i)
    for prev, stride in zip(strides, strides[1:], strict=False):
        b = _best_index(scores)
        for m in range(1, -(-prev // stride)):
            for i in (b - m * stride, b + m * stride):
                if 0 <= i < n and i not in scores:
                    scores[i] = score(i)
    return scores


def _search_weights(
    layer: EQLayer,
    s_x: float,
    start_w: npt.NDArray[np.float32],
    evaluate: Callable[[EQLayer, float, npt.NDArray[np.float32]], Evaluation],
    config: EQConfig,
) -> tuple[npt.NDArray[np.float32], Evaluation, Evaluation, Curve]:
    """Per-channel weight search (module doc). Returns (scales, start evaluation, chosen evaluation, curve)."""
    start = evaluate(layer, s_x, start_w)
    grid = candidate_grid(start_w, config).astype(np.float32).reshape(config.n, -1)  # (n, C)
    factors = np.linspace(config.alpha, config.beta, config.n)
    strides = search_schedule(config.n, config.exhaustive)
    evals: dict[int, Evaluation] = {}

    def uniform(i: int) -> float:
        evals[i] = evaluate(layer, s_x, grid[i])
        return evals[i].cosine

    scores = coarse_to_fine(config.n, uniform, strides)
    best_scales, best, chosen = start_w, start, 1.0
    u = _best_index(scores)
    cols = np.arange(grid.shape[1])
    if start.channel_cosines is not None and grid.shape[1] > 1 and all(e.channel_cosines is not None for e in evals.values()):
        # each channel keeps its best candidate: first among the uniform evaluations, then refined
        # around its own best index (channels are independent, so one evaluation serves them all)
        ch_best = np.asarray(start.channel_cosines, dtype=np.float64).copy()
        ch_idx = np.full(grid.shape[1], -1)
        for i in sorted(evals):
            c = np.asarray(evals[i].channel_cosines, dtype=np.float64)
            up = c > ch_best
            ch_best[up], ch_idx[up] = c[up], i
        for prev, stride in zip(strides, strides[1:], strict=False):
            base = np.where(ch_idx >= 0, ch_idx, int(np.argmin(np.abs(factors - 1.0))))
            for m in range(1, -(-prev // stride)):
                for off in (-m * stride, m * stride):
                    idx = np.clip(base + off, 0, config.n - 1)
                    e = evaluate(layer, s_x, grid[idx, cols])
                    c = np.asarray(e.channel_cosines, dtype=np.float64)
                    up = c > ch_best
                    ch_best[up], ch_idx[up] = c[up], idx[up]
        better = ch_idx >= 0
        if better.any():
            combined = np.where(better, grid[np.maximum(ch_idx, 0), cols], start_w).astype(np.float32)
            e = evaluate(layer, s_x, combined)
            if e.cosine > best.cosine:
                best_scales, best = combined, e
    if scores[u] > best.cosine:
        best_scales, best, chosen = grid[u], evals[u], float(factors[u])
    order = sorted(scores)
    ys = np.array([scores[i] for i in order], dtype=np.float64)
    curve = Curve(factors[order], ys, "weight scale factor (all channels)", "mean cosine", chosen)
    return np.asarray(best_scales, dtype=np.float32), start, best, curve


def eq_search(
    layers: Sequence[EQLayer],
    initial: Mapping[str, EQStart],
    evaluate: Evaluate,
    config: EQConfig | None = None,
    *,
    on_round: Callable[[int], None] | None = None,
    on_fixed: Callable[[Sequence[EQLayer], float, Mapping[str, npt.NDArray[np.float32]]], None] | None = None,
    progress: Progress | None = None,
) -> EQResult:
    """EasyQuant's alternating search over a callable (module doc): pure, testable with a fake.

    layers: in graph order; initial: layer name -> EQStart; evaluate(layer, input_scale, weight_scales)
    -> Evaluation (or a float: the mean cosine; then the weights get one factor for all channels).
    on_round(r) is called before round r (0-based); on_fixed(layers, input_scale, weight scales by
    layer) after the layers reading one tensor have their scales for this round (the real evaluate
    uses both to advance its walk of the quantized network). progress(done, total) counts groups.
    """
    config = config or EQConfig()
    missing = [layer.name for layer in layers if layer.name not in initial]
    if missing:
        raise QuantvizError(f"EQ has no starting scales for layer(s) {', '.join(missing)}.")
    count = 0

    def ev(layer: EQLayer, s_x: float, s_w: npt.NDArray[np.float32]) -> Evaluation:
        nonlocal count
        count += 1
        return _as_evaluation(evaluate(layer, float(s_x), np.asarray(s_w, dtype=np.float32)))

    groups = _groups(layers)
    s_in = {g[0].input: float(initial[g[0].name].input_scale) for g in groups}
    s_w = {layer.name: np.asarray(initial[layer.name].weight_scales, dtype=np.float32).reshape(-1) for layer in layers}
    initial_cos: dict[str, float] = {}
    final_cos: dict[str, float] = {}
    traces: dict[str, list[EQRound]] = {layer.name: [] for layer in layers}
    in_curves: dict[str, Curve] = {}
    w_curves: dict[str, Curve] = {}
    total = config.rounds * len(groups)
    done = 0
    if progress:
        progress(0, total)
    for r in range(config.rounds):
        if on_round:
            on_round(r)
        for group in groups:
            x = group[0].input
            starts: dict[str, float] = {}
            after_w: dict[str, float] = {}
            for layer in group:
                scales, start, best, curve = _search_weights(layer, s_in[x], s_w[layer.name], ev, config)
                s_w[layer.name] = scales
                starts[layer.name] = start.cosine
                after_w[layer.name] = best.cosine
                w_curves[layer.name] = curve
                initial_cos.setdefault(layer.name, start.cosine)
            grid = candidate_grid(s_in[x], config)
            rows: dict[int, list[float]] = {}

            def mean_cos(
                i: int, group: list[EQLayer] = group, grid: npt.NDArray[np.float64] = grid, rows: dict[int, list[float]] = rows
            ) -> float:
                rows[i] = [ev(layer, grid[i], s_w[layer.name]).cosine for layer in group]
                return float(np.mean(rows[i]))

            scores = coarse_to_fine(config.n, mean_cos, search_schedule(config.n, config.exhaustive))
            base = float(np.mean([after_w[layer.name] for layer in group]))
            b = _best_index(scores)
            after_in = dict(after_w)
            if scores[b] > base:
                s_in[x] = float(grid[b])
                after_in = {layer.name: float(rows[b][i]) for i, layer in enumerate(group)}
            order = sorted(scores)
            xs, means = grid[order], np.array([scores[i] for i in order], dtype=np.float64)
            for layer in group:
                in_curves[layer.name] = Curve(xs, means, "input scale", "mean cosine", s_in[x])
                traces[layer.name].append(EQRound(r + 1, starts[layer.name], after_w[layer.name], after_in[layer.name]))
                final_cos[layer.name] = after_in[layer.name]
            if on_fixed:
                on_fixed(group, s_in[x], {layer.name: s_w[layer.name] for layer in group})
            done += 1
            if progress:
                progress(done, total)
    results: dict[str, EQLayerResult] = {}
    for group in groups:
        for layer in group:
            first = initial[layer.name]
            results[layer.name] = EQLayerResult(
                layer=layer,
                initial_input_scale=float(first.input_scale),
                initial_weight_scales=np.asarray(first.weight_scales, dtype=np.float32).reshape(-1),
                initial_cosine=initial_cos[layer.name],
                input_scale=s_in[layer.input],
                weight_scales=s_w[layer.name],
                cosine=final_cos[layer.name],
                trace=tuple(traces[layer.name]),
                input_curve=in_curves[layer.name],
                weight_curve=w_curves[layer.name],
                shared_input=tuple(other.name for other in group if other.name != layer.name),
            )
    return EQResult(results, config, count)


# ---------------------------------------------------------------------------------------------
# The real evaluate: onnxruntime on the folded model, streamed layer by layer.


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


# ---------------------------------------------------------------------------------------------
# The calibration method: model + statistics + data -> CalibrationTable.


def find_layers(
    prepared: PreparedModel, scales: Mapping[str, float], weights: Mapping[str, WeightQuant]
) -> tuple[list[EQLayer], dict[str, str]]:
    """The Conv/Gemm layers EQ can search, in graph order, and why the others are left out."""
    graph = prepared.proto.graph
    consts = constant_values(graph)
    info = analyse(prepared.proto)
    fused = {g.producer: g for g in info.groups}
    layers: list[EQLayer] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in EQ_LAYER_OPS:
            continue
        if len(node.input) < 2 or node.input[1] not in consts:
            skipped[node.name] = "its weight is not a constant"
            continue
        x, w = node.input[0], node.input[1]
        wq = weights.get(w)
        if wq is None:
            skipped[node.name] = "its weight is not a float constant"
            continue
        if wq.node != node.name:
            skipped[node.name] = f"its weight is shared with {wq.node}, which EQ searches"
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            skipped[node.name] = "Gemm with transA = 1 (the samples are not on the first axis)"
            continue
        if x in consts:
            skipped[node.name] = "its input is a constant"
            continue
        s = scales.get(x)
        if not s or not np.isfinite(s) or s <= 0:
            skipped[node.name] = f"its input '{x}' has no usable scale in the table"
            continue
        group = fused.get(node.name)
        layers.append(
            EQLayer(
                name=node.name,
                op_type=node.op_type,
                input=x,
                weight=w,
                output=group.post_activation if group else node.output[0],
                activation=group.activation if group else "",
                channels=int(np.asarray(wq.scales).size),
            )
        )
    return layers, skipped


def _usable_scales(table: CalibrationTable) -> dict[str, float]:
    return {n: float(e.scale) for n, e in table.tensors.items() if not e.float_kept and is_finite_entry(e) and e.scale > 0}


def calibrate_eq(
    model: LoadedModel,
    stats: CalibrationStats,
    source: CalibrationSource,
    config: EQConfig | None = None,
    progress: Progress | None = None,
    *,
    method_config: MethodConfig | None = None,
    per_channel: bool = True,
    profile: str | None = None,
    clip_outputs: bool = False,
) -> CalibrationTable:
    """EasyQuant calibration table: EQ input scales on the layers it searched, KL elsewhere.

    Starts from the KL table of the model (quantviz.table.calibrate_model: fused shared scales, abs-max
    weights on the BatchNorm-folded model), runs eq_search with a ModelEvaluator on the first
    min(N, config.max_samples) samples of `source`, and returns the table with: the searched input
    tensors' entries replaced (method "eq"; extra["eq"] keeps the KL values and the layers), the
    searched weights' per-channel scales in table.weights (FORMATS.md {"axis", "scales", "node"}; "method"
    "eq" and "absmax_scales" added), requantization multipliers recomputed, and settings["eq"] with the
    config and each layer's cosine trace. Symmetric int8 only.
    """
    config = config or EQConfig()
    method_config = method_config or MethodConfig()
    if not method_config.symmetric:
        raise QuantvizError("EQ searches symmetric int8 scales; calibrate without --asymmetric to use it.")
    if method_config.power_of_two:
        raise QuantvizError("EQ searches free scales, not powers of two; calibrate without --power-of-two to use it.")
    if source.num_samples < 1:
        raise QuantvizError("EQ needs at least one calibration sample; the data holds none.")
    base = calibrate_model(model, stats, "kl", method_config, per_channel=per_channel, profile=profile, clip_outputs=clip_outputs)
    prepared = prepare_float_model(model)
    scales = _usable_scales(base)
    weights = weight_scales(prepared.proto, per_channel)
    layers, skipped = find_layers(prepared, scales, weights)
    layers, skipped = _outside_control_flow(prepared, layers, skipped)
    if not layers:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]) or "the model has no Conv or Gemm"
        raise QuantvizError(f"EQ found no Conv or Gemm layer it can search ({reasons}); use another method.")
    initial = {
        layer.name: EQStart(scales[layer.input], np.asarray(weights[layer.weight].scales, dtype=np.float32)) for layer in layers
    }
    fused_pre = frozenset(g.pre_activation for g in analyse(prepared.proto).groups)
    evaluator = ModelEvaluator(
        prepared, layers, scales, weights, source, config, effective_batch_size(model, config.max_samples, source), fused_pre
    )
    result = eq_search(
        layers, initial, evaluator, config, on_round=evaluator.start_round, on_fixed=evaluator.fix, progress=progress
    )
    return eq_table(base, result, model, per_channel, evaluator.samples, skipped)


def _outside_control_flow(
    prepared: PreparedModel, layers: Sequence[EQLayer], skipped: Mapping[str, str]
) -> tuple[list[EQLayer], dict[str, str]]:
    """The layers whose input the node-by-node walk can reach without running an If/Loop/Scan (the walk
    runs one node at a time and cannot step into a subgraph); the others keep KL, with the reason."""
    nodes = list(prepared.proto.graph.node)
    keep: list[EQLayer] = []
    out = dict(skipped)
    for layer in layers:
        flow = [n.name for n in ModelEvaluator._needed_nodes(nodes, {layer.input}) if n.op_type in SUBGRAPH_OPS]  # noqa: SLF001
        if flow:
            out[layer.name] = f"its input comes through control flow ({', '.join(flow)}), which EQ's walk cannot run"
        else:
            keep.append(layer)
    return keep, out


def eq_table(
    base: CalibrationTable,
    result: EQResult,
    model: LoadedModel,
    per_channel: bool,
    samples: int,
    skipped: Mapping[str, str] | None = None,
) -> CalibrationTable:
    """The KL table with EQ's scales put in (see calibrate_eq)."""
    from quantviz.table import apply_model

    tensors = dict(base.tensors)
    by_input: dict[str, list[EQLayerResult]] = {}
    for r in result.layers.values():
        by_input.setdefault(r.layer.input, []).append(r)
    for name, rs in by_input.items():
        e = tensors[name]
        s = float(np.float32(rs[0].input_scale))
        t = s * INT8_MAX
        kl = {"method": e.method, "threshold": e.threshold, "scale": e.scale, "min": e.min, "max": e.max}
        tensors[name] = replace(
            e,
            method="eq",
            min=-t,
            max=t,
            threshold=t,
            scale=s,
            zero_point=0,
            extra={
                **e.extra,
                "eq": {
                    "start": kl,
                    "layers": [r.layer.name for r in rs],
                    "cosine": float(np.mean([r.cosine for r in rs])),
                    "initial_cosine": float(np.mean([r.initial_cosine for r in rs])),
                },
            },
        )
    table = apply_model(
        replace(base, tensors=tensors),
        model,
        per_channel,
        weight_overrides={r.layer.weight: r.weight_scales.tolist() for r in result.layers.values()},
        weight_method="eq",
    )
    settings = {
        **table.settings,
        "method": "eq",
        "eq": {
            **asdict(result.config),
            "start": "kl activations, abs-max weights",
            "samples": samples,
            "evaluations": result.evaluations,
            "not_searched": dict(skipped or {}),
            "layers": {name: _layer_settings(r) for name, r in result.layers.items()},
        },
    }
    return replace(table, settings=settings)


def _layer_settings(r: EQLayerResult) -> dict[str, Any]:
    return {
        "op_type": r.layer.op_type,
        "input": r.layer.input,
        "weight": r.layer.weight,
        "output": r.layer.output,
        "shared_input": list(r.shared_input),
        "initial_input_scale": r.initial_input_scale,
        "input_scale": r.input_scale,
        "initial_cosine": r.initial_cosine,
        "cosine": r.cosine,
        "weight_channels_changed": int(np.sum(r.weight_scales != r.initial_weight_scales)),
        "trace": [t.to_dict() for t in r.trace],
        "input_search": {"scales": [float(v) for v in r.input_curve.x], "cosines": [float(v) for v in r.input_curve.y]},
        "weight_search": {"factors": [float(v) for v in r.weight_curve.x], "cosines": [float(v) for v in r.weight_curve.y]},
    }


__all__ = [
    "EQ_MAX_SAMPLES",
    "EQConfig",
    "EQLayer",
    "EQLayerResult",
    "EQResult",
    "EQRound",
    "EQStart",
    "Evaluation",
    "LayerRunner",
    "ModelEvaluator",
    "calibrate_eq",
    "candidate_grid",
    "eq_search",
    "eq_table",
    "fake_quantize_fast",
    "find_layers",
    "layer_cosines",
]
