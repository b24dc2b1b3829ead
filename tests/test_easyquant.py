"""EQ / EasyQuant (quantviz.easyquant): the search over a fake evaluate, the real evaluate against
plain numpy, every sample used, and the sample model against KL and float."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from quantviz.cli import main
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import CalibrationSource, open_source
from quantviz.easyquant import (
    EQ_MAX_SAMPLES,
    EQConfig,
    EQLayer,
    EQStart,
    Evaluation,
    LayerRunner,
    ModelEvaluator,
    calibrate_eq,
    candidate_grid,
    eq_search,
    fake_quantize_fast,
    find_layers,
    layer_cosines,
)
from quantviz.errors import QuantvizError
from quantviz.fakequant import fake_quantize
from quantviz.metrics import cosine
from quantviz.model import load_model
from quantviz.qdq import prepare_float_model
from quantviz.weights import weight_scales
from tests.conftest import SAMPLES, ort_run_with_outputs

OPSET = 17
IR_VERSION = 10


# ---------------------------------------------------------------------------------------------
# Oracles written here: fake quantization, convolution, cosines in plain numpy.


def np_fq(x: np.ndarray, s: np.ndarray | float) -> np.ndarray:
    """s * clip(round_half_even(x / s), -127, 127) in float64."""
    return np.clip(np.round(np.asarray(x, np.float64) / s), -127, 127) * s


def np_conv(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: Sequence[int], strides: Sequence[int] = (1, 1)
) -> np.ndarray:
    """Conv2d (group 1) as a sum over kernel offsets, float64. pads = [top, left, bottom, right]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (h + pads[0] + pads[2] - kh) // strides[0] + 1
    wo = (wd + pads[1] + pads[3] - kw) // strides[1] + 1
    out = np.zeros((n, m, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + strides[0] * ho : strides[0], j : j + strides[1] * wo : strides[1]]
            out += np.einsum("nchw,mc->nmhw", patch, w[:, :, i, j])
    return out if b is None else out + np.asarray(b, np.float64)[None, :, None, None]


def np_cosines(o: np.ndarray, o_hat: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over samples of the per-sample cosine, and per channel (mean over samples of each
    (sample, channel) slice's cosine; over the samples when a channel has one value per sample)."""
    o = np.asarray(o, np.float64)
    q = np.asarray(o_hat, np.float64)
    n, c = o.shape[0], o.shape[1]
    per_sample = []
    for i in range(n):
        a, b = o[i].ravel(), q[i].ravel()
        per_sample.append(
            1.0
            if not a.any() and not b.any()
            else (0.0 if not a.any() or not b.any() else a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        )
    ch = np.zeros(c)
    for k in range(c):
        if o[0, k].size == 1:
            a, b = o[:, k].ravel(), q[:, k].ravel()
            ch[k] = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        else:
            vals = []
            for i in range(n):
                a, b = o[i, k].ravel(), q[i, k].ravel()
                vals.append(
                    1.0
                    if not a.any() and not b.any()
                    else (0.0 if not a.any() or not b.any() else a @ b / np.linalg.norm(a) / np.linalg.norm(b))
                )
            ch[k] = np.mean(vals)
    return float(np.mean(per_sample)), ch


# ---------------------------------------------------------------------------------------------
# Tiny graphs


def two_convs(batch: str | int = "N", seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x[N,2,6,6] -> Conv1(w1,b1, pad 1) -> Relu -> r -> Conv2(w2,b2) -> y[N,3,6,6]."""
    rng = np.random.default_rng(seed)
    p = {
        "w1": (rng.standard_normal((4, 2, 3, 3)) * 0.4).astype(np.float32),
        "b1": (rng.standard_normal(4) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((3, 4, 3, 3)) * 0.3).astype(np.float32),
        "b2": (rng.standard_normal(3) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(
        nodes,
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in p.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(m)
    return m, p


def array_source(x: np.ndarray, fetched: list[tuple[int, int]] | None = None) -> CalibrationSource:
    """A source over an array that records which sample ranges were read."""

    def fetch(start: int, stop: int) -> dict[str, np.ndarray]:
        if fetched is not None:
            fetched.append((start, stop))
        return {"x": x[start:stop]}

    return CalibrationSource("test array", "test", int(x.shape[0]), False, fetch)


def evaluator_for(
    proto: onnx.ModelProto, x: np.ndarray, scales: dict[str, float], config: EQConfig, batch_size: int = 64
) -> tuple[ModelEvaluator, dict[str, EQLayer]]:
    model = load_model(proto.SerializeToString())
    prepared = prepare_float_model(model)
    weights = weight_scales(prepared.proto)
    layers, _ = find_layers(prepared, scales, weights)
    ev = ModelEvaluator(prepared, layers, scales, weights, array_source(x), config, batch_size, frozenset({"c1"}))
    ev.start_round(0)
    return ev, {layer.name: layer for layer in layers}


# ---------------------------------------------------------------------------------------------
# Config


def test_defaults_are_the_papers() -> None:
    c = EQConfig()
    assert (c.alpha, c.beta, c.n, c.rounds, c.max_samples, c.mode) == (0.5, 2.0, 100, 1, 50, "accumulated")
    assert EQ_MAX_SAMPLES == 50


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"alpha": 2.0, "beta": 2.0}, "smaller than beta"),
        ({"alpha": 3.0, "beta": 2.0}, "smaller than beta"),
        ({"alpha": 0.0}, "above 0"),
        ({"n": 1}, "at least 2"),
        ({"n": 2.5}, "whole number"),
        ({"rounds": 0}, "at least 1"),
        ({"max_samples": 0}, "at least 1"),
        ({"mode": "layerwise"}, "accumulated, isolated"),
    ],
)
def test_bad_config_is_a_sentence(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(QuantvizError, match=words):
        EQConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The search over a fake evaluate


def bowl(
    tx: dict[str, float], tw: dict[str, np.ndarray], calls: list[tuple[str, float, np.ndarray]] | None = None
) -> Callable[[EQLayer, float, np.ndarray], Evaluation]:
    """A concave fake: cos = 1 - (s_x - tx)^2 - mean_c (s_w[c] - tw[c])^2; channel c: 1 - dx - dw[c]."""

    def evaluate(layer: EQLayer, s_x: float, s_w: np.ndarray) -> Evaluation:
        if calls is not None:
            calls.append((layer.name, s_x, np.array(s_w)))
        dx = (s_x - tx[layer.input]) ** 2
        dw = (np.asarray(s_w, np.float64) - tw[layer.name]) ** 2
        return Evaluation(float(1 - dx - dw.mean()), 1 - dx - dw)

    return evaluate


def test_search_finds_the_known_argmax_on_the_grid() -> None:
    config = EQConfig()
    layer = EQLayer("L", "Conv", "x", "w", "y", channels=3)
    s0, w0 = 0.8, np.array([0.1, 0.2, 0.3], np.float32)
    grid_x = np.linspace(0.5 * s0, 2.0 * s0, 100)
    grid_w = np.linspace(0.5 * w0.astype(np.float64), 2.0 * w0.astype(np.float64), 100).astype(np.float32)
    ks = [5, 60, 99]
    tw = np.array([grid_w[k, c] for c, k in enumerate(ks)], np.float64)
    calls: list[tuple[str, float, np.ndarray]] = []
    res = eq_search([layer], {"L": EQStart(s0, w0)}, bowl({"x": float(grid_x[70])}, {"L": tw}, calls), config)
    r = res.layers["L"]
    assert r.input_scale == grid_x[70]
    np.testing.assert_array_equal(r.weight_scales, [grid_w[k, c] for c, k in enumerate(ks)])
    assert r.cosine == pytest.approx(1.0, abs=1e-12)
    assert res.evaluations == len(calls)


def test_off_grid_optimum_gives_the_nearest_candidate() -> None:
    layer = EQLayer("L", "Gemm", "x", "w", "y", channels=2)
    s0, w0 = 1.0, np.array([1.0, 1.0], np.float32)
    tx, tw = 1.2345, np.array([0.77, 1.61])
    res = eq_search([layer], {"L": EQStart(s0, w0)}, bowl({"x": tx}, {"L": tw}), EQConfig())
    grid = np.linspace(0.5, 2.0, 100)
    assert res.layers["L"].input_scale == grid[np.argmin(np.abs(grid - tx))]
    gw = grid.astype(np.float32)
    np.testing.assert_array_equal(res.layers["L"].weight_scales, [gw[np.argmin(np.abs(gw - t))] for t in tw])


def test_candidates_requested_are_exactly_the_linspace_grid() -> None:
    config = EQConfig(alpha=0.3, beta=1.7, n=7)
    layer = EQLayer("L", "Conv", "x", "w", "y", channels=2)
    s0, w0 = 0.05, np.array([0.01, 0.4], np.float32)
    calls: list[tuple[str, float, np.ndarray]] = []
    eq_search([layer], {"L": EQStart(s0, w0)}, bowl({"x": 10.0}, {"L": np.array([0.01, 0.4])}, calls), config)
    expected_x = np.linspace(0.3 * s0, 1.7 * s0, 7)
    np.testing.assert_array_equal(candidate_grid(s0, config), expected_x)
    xs = [c[1] for c in calls]
    assert set(xs) == {s0, *expected_x.tolist()}
    assert xs[-7:] == expected_x.tolist()  # the input search, in grid order
    expected_w = np.linspace(0.3 * w0.astype(np.float64), 1.7 * w0.astype(np.float64), 7).astype(np.float32)
    asked = [c[2] for c in calls if c[1] == s0]
    for row in expected_w:
        assert any(np.array_equal(row, a) for a in asked)
    np.testing.assert_array_equal(asked[0], w0)  # the start is evaluated first


def test_start_kept_when_every_candidate_is_worse() -> None:
    """A sharp peak at the start scale, off the grid: nothing may replace it."""
    s0, w0 = 0.7, np.array([0.3, 0.9], np.float32)

    def peak(layer: EQLayer, s_x: float, s_w: np.ndarray) -> Evaluation:
        dx = abs(s_x - s0)
        dw = np.abs(np.asarray(s_w, np.float64) - w0)
        return Evaluation(float(1 - dx - dw.sum()), 1 - dx - dw)

    config = EQConfig(alpha=0.55, beta=1.9, n=8)  # 1.0 is not a grid factor
    assert not np.any(np.isclose(np.linspace(0.55, 1.9, 8), 1.0))
    r = eq_search([EQLayer("L", "Conv", "x", "w", "y")], {"L": EQStart(s0, w0)}, peak, config).layers["L"]
    assert r.input_scale == s0
    np.testing.assert_array_equal(r.weight_scales, w0)
    assert r.cosine == r.initial_cosine == 1.0


@settings(max_examples=40, deadline=None)
@given(
    tx=st.floats(0.05, 5.0),
    tw=st.lists(st.floats(0.01, 3.0), min_size=1, max_size=4),
    s0=st.floats(0.05, 3.0),
    wiggle=st.floats(0.0, 0.2),
    rounds=st.integers(1, 3),
)
def test_never_worse_than_the_start(tx: float, tw: list[float], s0: float, wiggle: float, rounds: int) -> None:
    """Property: on a bumpy (non-concave, non-separable) objective, the final layer cosine is >= the
    start's and every step of the trace is >= the step before."""
    target = np.array(tw)
    w0 = np.full(target.size, 0.5, np.float32)

    def bumpy(layer: EQLayer, s_x: float, s_w: np.ndarray) -> Evaluation:
        w = np.asarray(s_w, np.float64)
        ch = 1 - (s_x - tx) ** 2 - (w - target) ** 2 + wiggle * np.sin(40 * w * s_x)
        return Evaluation(float(ch.mean() - wiggle * np.cos(9 * w.sum())), ch)

    layer = EQLayer("L", "Conv", "x", "w", "y", channels=target.size)
    r = eq_search([layer], {"L": EQStart(s0, w0)}, bumpy, EQConfig(n=15, rounds=rounds)).layers["L"]
    start = bumpy(layer, s0, w0).cosine
    final = bumpy(layer, r.input_scale, r.weight_scales).cosine
    assert r.initial_cosine == start
    assert final == pytest.approx(r.cosine, abs=1e-12)
    assert final >= start
    assert len(r.trace) == rounds
    steps = [start] + [v for t in r.trace for v in (t.weights, t.input)]
    assert all(b >= a for a, b in zip(steps, steps[1:], strict=False))


def test_a_float_evaluate_scales_all_channels_by_one_factor() -> None:
    w0 = np.array([0.2, 0.4], np.float32)

    def plain(layer: EQLayer, s_x: float, s_w: np.ndarray) -> float:
        return float(1 - (s_x - 1.0) ** 2 - ((np.asarray(s_w, np.float64) - 2 * w0) ** 2).sum())

    r = eq_search([EQLayer("L", "Conv", "x", "w", "y")], {"L": EQStart(1.0, w0)}, plain, EQConfig()).layers["L"]
    np.testing.assert_allclose(r.weight_scales, 2 * w0, rtol=1e-6)
    assert r.weight_scales[1] / r.weight_scales[0] == pytest.approx(2.0, rel=1e-6)


def test_layers_reading_one_tensor_share_its_scale() -> None:
    """Two branches reading x: one input scale, the mean of their cosines maximised; on_fixed once per group."""
    a = EQLayer("a", "Conv", "x", "wa", "ya")
    b = EQLayer("b", "Conv", "x", "wb", "yb")
    c = EQLayer("c", "Conv", "ya", "wc", "yc")
    grid = np.linspace(0.5, 2.0, 100)

    def ev(layer: EQLayer, s_x: float, s_w: np.ndarray) -> float:
        want = {"a": grid[10], "b": grid[50], "c": 1.0}[layer.name]
        return float(1 - (s_x - want) ** 2)

    fixed: list[tuple[list[str], float]] = []
    rounds: list[int] = []
    res = eq_search(
        [a, b, c],
        {n: EQStart(1.0, np.ones(1, np.float32)) for n in "abc"},
        ev,
        EQConfig(rounds=2),
        on_fixed=lambda layers, s, w: fixed.append(([x.name for x in layers], s)),
        on_round=rounds.append,
    )
    assert res.layers["a"].input_scale == res.layers["b"].input_scale == grid[30]  # midway between both optima
    assert res.layers["a"].shared_input == ("b",)
    assert [f[0] for f in fixed] == [["a", "b"], ["c"]] * 2
    assert rounds == [0, 1]


# ---------------------------------------------------------------------------------------------
# Numerics of the real evaluate


def test_fast_fake_quantization_equals_fakequant() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 4, 7)) * 3).astype(np.float32)
    s = 0.0173
    x[0, 0, :5] = np.array([0.5, 1.5, -2.5, 500.0, -500.0], np.float32) * np.float32(s)  # ties and clipping
    np.testing.assert_array_equal(fake_quantize_fast(x, s), fake_quantize(x, s).astype(np.float32))
    per = np.array([0.01, 0.02, 0.5, 1.0]).reshape(1, 4, 1)
    np.testing.assert_array_equal(fake_quantize_fast(x, per), fake_quantize(x, per).astype(np.float32))


def test_layer_cosines_match_metrics_and_a_loop() -> None:
    rng = np.random.default_rng(4)
    o = rng.standard_normal((6, 3, 4, 4))
    o[2] = 0.0
    o_hat = o + 0.3 * rng.standard_normal(o.shape)
    o_hat[2] = 0.0  # 0/0 -> 1
    o_hat[3, 1] = 0.0  # a zero slice against a non-zero one -> 0
    ev = layer_cosines(o, o_hat)
    want, want_ch = np_cosines(o, o_hat)
    assert ev.cosine == pytest.approx(cosine(o, o_hat), abs=1e-12)
    assert ev.cosine == pytest.approx(want, abs=1e-12)
    assert ev.channel_cosines is not None
    np.testing.assert_allclose(ev.channel_cosines, want_ch, atol=1e-12)
    g = rng.standard_normal((9, 5))  # Gemm: one value per sample and channel
    g_hat = g + 0.2 * rng.standard_normal(g.shape)
    ev = layer_cosines(g, g_hat)
    want, want_ch = np_cosines(g, g_hat)
    assert ev.cosine == pytest.approx(want, abs=1e-12)
    assert ev.channel_cosines is not None
    np.testing.assert_allclose(ev.channel_cosines, want_ch, atol=1e-12)


def test_real_evaluate_equals_numpy_on_a_tiny_conv_graph() -> None:
    """Isolated: cos(conv(x), conv(fq(x, s_x), fq(w, s_w))) with the fused Relu, recomputed in numpy."""
    proto, p = two_convs()
    x = np.random.default_rng(1).uniform(-1, 1, (5, 2, 6, 6)).astype(np.float32)
    ev, layers = evaluator_for(proto, x, {"x": 1 / 127, "c1": 0.02, "r": 0.02}, EQConfig(mode="isolated"))
    conv1 = layers["conv1"]
    assert conv1.output == "r" and conv1.activation == "relu"
    s_x, s_w = 0.0123, np.array([0.004, 0.006, 0.005, 0.003], np.float32)
    got = ev(conv1, s_x, s_w)
    o = np.maximum(np_conv(x, p["w1"], p["b1"], [1, 1, 1, 1]), 0)
    o_hat = np.maximum(
        np_conv(np_fq(x, s_x), np_fq(p["w1"], s_w.astype(np.float64).reshape(4, 1, 1, 1)), p["b1"], [1, 1, 1, 1]), 0
    )
    want, want_ch = np_cosines(o, o_hat)
    assert got.cosine == pytest.approx(want, abs=1e-6)
    assert got.channel_cosines is not None
    np.testing.assert_allclose(got.channel_cosines, want_ch, atol=1e-6)
    assert got.cosine < 1 - 1e-5  # the quantization is visible: the comparison is not vacuous


def test_accumulated_evaluate_equals_numpy_on_the_quantized_upstream() -> None:
    """conv2 reads r = relu(conv1(fq(x), fq(w1)) + b1) (quantized once, by the candidate: Conv->Relu is fused)."""
    proto, p = two_convs()
    x = np.random.default_rng(2).uniform(-1, 1, (4, 2, 6, 6)).astype(np.float32)
    sx, sr = 1 / 127, 0.03
    ev, layers = evaluator_for(proto, x, {"x": sx, "c1": sr, "r": sr}, EQConfig(mode="accumulated"))
    conv1, conv2 = layers["conv1"], layers["conv2"]
    w1s = np.array([0.005, 0.004, 0.006, 0.003], np.float32)
    ev(conv1, sx, w1s)
    ev.fix([conv1], sx, {"conv1": w1s})
    s_cand, w2s = 0.021, np.array([0.003, 0.004, 0.0035], np.float32)
    got = ev(conv2, s_cand, w2s)
    r_float = np.maximum(np_conv(x, p["w1"], p["b1"], [1, 1, 1, 1]), 0)
    r_acc = np.maximum(
        np_conv(np_fq(x, sx), np_fq(p["w1"], w1s.astype(np.float64).reshape(4, 1, 1, 1)), p["b1"], [1, 1, 1, 1]), 0
    )
    o = np_conv(r_float, p["w2"], p["b2"], [1, 1, 1, 1])
    o_hat = np_conv(np_fq(r_acc, s_cand), np_fq(p["w2"], w2s.astype(np.float64).reshape(3, 1, 1, 1)), p["b2"], [1, 1, 1, 1])
    want, want_ch = np_cosines(o, o_hat)
    assert got.cosine == pytest.approx(want, abs=1e-6)
    assert got.channel_cosines is not None
    np.testing.assert_allclose(got.channel_cosines, want_ch, atol=1e-6)
    iso, _ = evaluator_for(proto, x, {"x": sx, "c1": sr, "r": sr}, EQConfig(mode="isolated"))
    o_iso = np_conv(np_fq(r_float, s_cand), np_fq(p["w2"], w2s.astype(np.float64).reshape(3, 1, 1, 1)), p["b2"], [1, 1, 1, 1])
    assert iso(conv2, s_cand, w2s).cosine == pytest.approx(np_cosines(o, o_iso)[0], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Every sample is used, each once, in order (ncnn's EQ fed the wrong images twice)


@pytest.mark.parametrize("batch", ["N", 1])
@pytest.mark.parametrize(("n_samples", "cap"), [(7, 5), (3, 50)])
@pytest.mark.parametrize("mode", ["accumulated", "isolated"])
def test_every_capped_sample_is_fed_once_in_order(
    monkeypatch: pytest.MonkeyPatch, batch: str | int, n_samples: int, cap: int, mode: str
) -> None:
    proto, _ = two_convs(batch)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (n_samples, 2, 6, 6)).astype(np.float32)
    m = min(n_samples, cap)
    fed: list[tuple[str, np.ndarray]] = []
    real_run = LayerRunner.run

    def recording(self: LayerRunner, xin: np.ndarray, w: np.ndarray) -> np.ndarray:
        fed.append((self.layer.name, np.array(xin)))
        return real_run(self, xin, w)

    monkeypatch.setattr(LayerRunner, "run", recording)
    model = load_model(proto.SerializeToString())
    stats = collect(model, array_source(x), CollectConfig())
    fetched: list[tuple[int, int]] = []
    calibrate_eq(model, stats, array_source(x, fetched), EQConfig(n=4, max_samples=cap, mode=mode))
    # the source is read once per round, in order, exactly up to the cap
    assert [i for a, b in fetched for i in range(a, b)] == list(range(m))
    r = np.concatenate([ort_run_with_outputs(proto, ["r"], {"x": x[i : i + 1]})["r"] for i in range(m)])
    oracle = {"conv1": x[:m], "conv2": r}
    for name, want in oracle.items():
        calls = [xin for n, xin in fed if n == name]
        assert len(calls) in (1 + 1 + 4 + 4, 1 + 1 + 4 + 1 + 4)  # float reference, start, n weights, [combination], n inputs
        assert any(np.allclose(c, want, atol=1e-6) for c in calls)  # the float reference run
        flat = want.reshape(m, -1)
        for c in calls:
            assert c.shape[0] == m
            d = ((c.reshape(m, 1, -1) - flat[None]) ** 2).sum(axis=2)
            np.testing.assert_array_equal(d.argmin(axis=1), np.arange(m))  # row i is sample i's


# ---------------------------------------------------------------------------------------------
# calibrate_eq on a model: table shape, errors


def test_table_from_calibrate_eq(tmp_path: Path) -> None:
    from quantviz.export.qv_json import read_json, write_json
    from quantviz.qdq import build
    from quantviz.table import calibrate_model

    proto, _ = two_convs()
    x = np.random.default_rng(6).uniform(-1, 1, (12, 2, 6, 6)).astype(np.float32)
    model = load_model(proto.SerializeToString())
    stats = collect(model, array_source(x), CollectConfig())
    table = calibrate_eq(model, stats, array_source(x), EQConfig(n=9))
    kl = calibrate_model(model, stats, "kl")
    eq = table.settings["eq"]
    assert table.settings["method"] == "eq" and eq["n"] == 9 and eq["samples"] == 12
    assert set(eq["layers"]) == {"conv1", "conv2"}
    for name, layer in eq["layers"].items():
        assert layer["cosine"] >= layer["initial_cosine"]
        assert len(layer["trace"]) == 1 and len(layer["input_search"]["scales"]) == 9
        w = table.weights[layer["weight"]]
        assert w["method"] == "eq" and w["axis"] == 0 and w["node"] == name
        assert len(w["scales"]) == len(w["absmax_scales"]) == (4 if name == "conv1" else 3)
        assert table.tensors[layer["input"]].scale == pytest.approx(layer["input_scale"], rel=1e-7)
        assert table.tensors[layer["input"]].method == "eq"
        assert table.tensors[layer["input"]].extra["eq"]["start"]["scale"] == kl.tensors[layer["input"]].scale
    # the fused pre-activation shares the searched scale; the output keeps KL's
    assert table.tensors["c1"].scale == table.tensors["r"].scale
    assert table.tensors["y"].scale == kl.tensors["y"].scale and table.tensors["y"].method == "kl"
    # requantization uses EQ's scales: M = s_x * s_w / s_y
    rq = table.requant["conv2"]
    want = table.tensors["r"].scale * np.array(table.weights["w2"]["scales"]) / table.tensors["y"].scale
    np.testing.assert_allclose(rq["real_multiplier"], want, rtol=1e-6)
    # the table survives JSON, and the QDQ builder places EQ's weight scales
    write_json(table, tmp_path / "eq.json")
    back = read_json(tmp_path / "eq.json")
    assert back.weights["w1"]["scales"] == table.weights["w1"]["scales"]
    assert back.settings["eq"]["layers"]["conv1"]["trace"] == json.loads(json.dumps(eq["layers"]["conv1"]["trace"]))
    assert set(build(model, table).weight_overrides) == {"w1", "w2"}


def test_asymmetric_and_layerless_models_are_refused() -> None:
    from quantviz.calib.result import MethodConfig

    proto, _ = two_convs()
    x = np.random.default_rng(7).uniform(-1, 1, (4, 2, 6, 6)).astype(np.float32)
    model = load_model(proto.SerializeToString())
    stats = collect(model, array_source(x), CollectConfig())
    with pytest.raises(QuantvizError, match="symmetric"):
        calibrate_eq(model, stats, array_source(x), method_config=MethodConfig(symmetric=False))
    relu_only = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"], name="relu")],
            "relu",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    m2 = load_model(relu_only.SerializeToString())
    x2 = np.random.default_rng(8).standard_normal((4, 4)).astype(np.float32)
    with pytest.raises(QuantvizError, match="no Conv or Gemm"):
        calibrate_eq(m2, collect(m2, array_source(x2), CollectConfig()), array_source(x2))


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_eq(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = str(SAMPLES / "digits_cnn.onnx"), str(SAMPLES / "digits_calib.npz")
    out = tmp_path / "eq.json"
    eq_args = ["--method", "eq", "--eq-n", "5", "--eq-samples", "8", "--eq-mode", "isolated"]
    assert main(["calibrate", model, "--data", data, *eq_args, "-o", str(out)]) == 0
    eq = json.loads(out.read_text())["settings"]["eq"]
    assert (eq["n"], eq["samples"], eq["mode"]) == (5, 8, "isolated")
    doc = json.loads(out.read_text())
    assert any(t["method"] == "eq" for t in doc["tensors"].values())
    stats = tmp_path / "s.npz"
    assert main(["collect", model, "--data", data, "-o", str(stats)]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--stats", str(stats), "--method", "eq", "-o", str(out)]) == 2
    assert "needs MODEL and --data" in capsys.readouterr().err
    assert main(["calibrate", model, "--data", data, "--method", "eq", "--eq-alpha", "3", "-o", str(out)]) == 2
    assert "alpha must be smaller than beta" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The sample model


@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig())
    return {"model": model, "source": source, "stats": stats}


def _fold(proto: onnx.ModelProto, conv: onnx.NodeProto, bn: onnx.NodeProto | None) -> tuple[np.ndarray, np.ndarray]:
    """The test's own BatchNormalization folding: w * g / sqrt(v + eps), (b - mean) * g / sqrt(v + eps) + beta."""
    init = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    w = init[conv.input[1]]
    b = init[conv.input[2]] if len(conv.input) > 2 else np.zeros(w.shape[0])
    if bn is None:
        return w, b
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    g, beta, mean, var = (init[n] for n in bn.input[1:5])
    s = g / np.sqrt(var + eps)
    return w * s.reshape(-1, *([1] * (w.ndim - 1))), (b - mean) * s + beta


@pytest.mark.slow
def test_digits_isolated_eq_beats_kl_on_a_numpy_recomputation(digits: dict[str, object]) -> None:
    """Every searched layer's cosine (fused Relu output, float input, numpy conv) with EQ's scales is
    >= with KL's; for layers sharing an input (two branches) the mean over them is."""
    model, source, stats = digits["model"], digits["source"], digits["stats"]
    table = calibrate_eq(model, stats, source, EQConfig(mode="isolated"))  # type: ignore[arg-type]
    from quantviz.table import calibrate_model

    kl = calibrate_model(model, stats, "kl")  # type: ignore[arg-type]
    proto = model.proto  # type: ignore[attr-defined]
    nodes = {n.name: n for n in proto.graph.node}
    consumer = {i: n for n in proto.graph.node for i in n.input}
    layers = table.settings["eq"]["layers"]
    x50 = np.load(SAMPLES / "digits_calib.npz")["input"][:50]
    names = sorted({layer["input"] for layer in layers.values()} | {layer["output"] for layer in layers.values()} - {"input"})
    acts = {"input": x50, **ort_run_with_outputs(proto, names, {"input": x50})}
    by_input: dict[str, list[tuple[float, float]]] = {}
    for name, layer in layers.items():
        node = nodes[name]
        nxt = consumer.get(node.output[0])
        bn = nxt if nxt is not None and nxt.op_type == "BatchNormalization" else None
        w, b = _fold(proto, node, bn)
        w_kl = np.array(kl.weights[layer["weight"]]["scales"], np.float64)
        w_eq = np.array(table.weights[layer["weight"]]["scales"], np.float64)
        s_kl, s_eq = kl.tensors[layer["input"]].scale, table.tensors[layer["input"]].scale
        relu = layer["output"] != (bn.output[0] if bn is not None else node.output[0])

        def run(
            s_x: float,
            s_w: np.ndarray,
            x: np.ndarray,
            quant: bool,
            node: onnx.NodeProto = node,
            w: np.ndarray = w,
            b: np.ndarray = b,
            relu: bool = relu,
        ) -> np.ndarray:
            xx = np_fq(x, s_x) if quant else np.asarray(x, np.float64)
            if node.op_type == "Conv":
                pads = next((list(a.ints) for a in node.attribute if a.name == "pads"), [0, 0, 0, 0])
                ww = np_fq(w, s_w.reshape(-1, 1, 1, 1)) if quant else w
                y = np_conv(xx, ww, b, pads)
            else:  # Gemm with transB = 1: y = x W^T + b
                ww = np_fq(w, s_w.reshape(-1, 1)) if quant else w
                y = xx @ ww.T + b
            return np.maximum(y, 0) if relu else y

        x = acts[layer["input"]]
        ref = acts[layer["output"]].astype(np.float64)
        np.testing.assert_allclose(run(1.0, w_kl, x, False), ref, atol=1e-4)  # the test's own float layer is right
        c_kl = np_cosines(ref, run(s_kl, w_kl, x, True))[0]
        c_eq = np_cosines(ref, run(s_eq, w_eq, x, True))[0]
        by_input.setdefault(layer["input"], []).append((c_kl, c_eq))
        if len(layers[name]["shared_input"]) == 0:
            assert c_eq >= c_kl - 1e-9, name
    for pairs in by_input.values():
        kl_mean, eq_mean = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
        assert eq_mean >= kl_mean - 1e-9
    assert sum(e > k + 1e-6 for pairs in by_input.values() for k, e in pairs) >= 3  # EQ changed something


@pytest.mark.slow
def test_digits_accumulated_eq_per_layer_and_accuracy(digits: dict[str, object]) -> None:
    """The default EQ (accumulated) on digits_cnn, measured by quantviz.sensitivity on the QDQ model
    onnxruntime's quantizer builds: every searched layer's accumulated cosine is >= KL's, and the
    accuracy on digits_eval is within 1 point of float (KL's too)."""
    from quantviz.sensitivity import analyze
    from quantviz.table import calibrate_model

    model, source, stats = digits["model"], digits["source"], digits["stats"]
    table = calibrate_eq(model, stats, source)  # type: ignore[arg-type]
    kl = calibrate_model(model, stats, "kl")  # type: ignore[arg-type]
    searched = table.settings["eq"]["layers"]
    assert len(searched) == 7  # 6 Conv + 1 Gemm
    for layer in searched.values():
        assert layer["cosine"] >= layer["initial_cosine"]
    ev = open_source(SAMPLES / "digits_eval.npz", model.inputs)  # type: ignore[attr-defined]
    labels = np.load(SAMPLES / "digits_eval.npz")["label"]
    r_kl = analyze(model, kl, ev, labels=labels)  # type: ignore[arg-type]
    r_eq = analyze(model, table, ev, labels=labels)  # type: ignore[arg-type]
    kl_layers = {le.layer: le for le in r_kl.layers}
    for le in r_eq.layers:
        if le.layer in searched:
            assert le.accumulated.cosine >= kl_layers[le.layer].accumulated.cosine - 1e-7, le.layer
    out_kl, out_eq = r_kl.outputs[0], r_eq.outputs[0]
    assert out_eq.accuracy_float is not None and out_eq.accuracy_quantized is not None
    assert out_kl.accuracy_float is not None and out_kl.accuracy_quantized is not None
    assert out_eq.accuracy_quantized >= out_eq.accuracy_float - 0.01
    assert out_kl.accuracy_quantized >= out_kl.accuracy_float - 0.01
    # EQ searches the Conv/Gemm layers (each checked above); the softmax output keeps its KL scale, so
    # the probabilities' cosine is not guaranteed to rise: it must stay within the error KL leaves.
    assert 1.0 - out_eq.figures.cosine <= 2.0 * (1.0 - out_kl.figures.cosine)
    assert out_eq.top1_agreement is not None and out_kl.top1_agreement is not None
    assert out_eq.top1_agreement >= out_kl.top1_agreement - 1.0 / 540


def test_coarse_to_fine_finds_the_grid_argmax_of_unimodal_scores_with_few_evaluations() -> None:
    from quantviz.easyquant import coarse_to_fine, search_schedule

    n = 100
    strides = search_schedule(n)
    assert strides == [10, 4, 1]
    for peak in (0, 3, 37, 50, 96, 99):
        seen: list[int] = []

        def score(i: int, peak: int = peak, seen: list[int] = seen) -> float:
            seen.append(i)
            return -float(abs(i - peak) ** 1.5)

        got = coarse_to_fine(n, score, strides)
        assert max(got, key=lambda i: (got[i], -i)) == peak
        assert len(seen) == len(set(seen)) <= 24  # 11 coarse + 4 + 6 refining, against 100
    assert search_schedule(n, exhaustive=True) == [1] and search_schedule(24) == [1]


def test_exhaustive_search_asks_every_candidate() -> None:
    layer = EQLayer("L", "Conv", "x", "w", "y", channels=2)
    s0, w0 = 1.0, np.array([1.0, 1.0], np.float32)
    calls: list[tuple[str, float, np.ndarray]] = []
    coarse: list[tuple[str, float, np.ndarray]] = []
    target = ({"x": 1.2345}, {"L": np.array([0.77, 1.61])})
    full = eq_search([layer], {"L": EQStart(s0, w0)}, bowl(*target, calls), EQConfig(exhaustive=True))
    fast = eq_search([layer], {"L": EQStart(s0, w0)}, bowl(*target, coarse), EQConfig())
    assert set(candidate_grid(s0, EQConfig()).tolist()) <= {c[1] for c in calls}
    assert len(coarse) < len(calls) / 3
    r_full, r_fast = full.layers["L"], fast.layers["L"]
    assert r_fast.input_scale == r_full.input_scale  # a bowl: both find the grid's best
    np.testing.assert_array_equal(r_fast.weight_scales, r_full.weight_scales)
