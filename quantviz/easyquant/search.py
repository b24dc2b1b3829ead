"""EQ / EasyQuant's search: each layer's candidate scales, coarse to fine (Wu et al. 2020).

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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from quantviz.calib.result import Curve
from quantviz.errors import CancelledError, QuantvizError
from quantviz.limits import EQ_ROUNDS_MAX, SEARCH_CANDIDATES_MAX, check_at_most

EQ_ALPHA = 0.5
EQ_BETA = 2.0
EQ_CANDIDATES = 100
EQ_ROUNDS = 1
EQ_MAX_SAMPLES = 50
EQ_MODES = ("accumulated", "isolated")
# Below this many candidates the search tries them all; from it on, coarse to fine (module doc).
COARSE_MIN_N = 25

Progress = Callable[[int, int], object]
Cancel = Callable[[], bool]  # True: stop before the next layer group


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
    cancel: Cancel | None = None,
) -> EQResult:
    """EasyQuant's alternating search over a callable (module doc): pure, testable with a fake.

    layers: in graph order; initial: layer name -> EQStart; evaluate(layer, input_scale, weight_scales)
    -> Evaluation (or a float: the mean cosine; then the weights get one factor for all channels).
    on_round(r) is called before round r (0-based); on_fixed(layers, input_scale, weight scales by
    layer) after the layers reading one tensor have their scales for this round (the real evaluate
    uses both to advance its walk of the quantized network). progress(done, total) counts layer groups
    (the layers reading one tensor, searched together) over all rounds; cancel() is asked before each
    group and True raises CancelledError (nothing is returned).
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
            if cancel is not None and cancel():
                raise CancelledError(f"EQ cancelled after {done} of {total} layer groups.")
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
