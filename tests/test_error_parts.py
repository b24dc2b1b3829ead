"""The error decomposition (sensitivity.ErrorParts): each part equals a numpy recomputation with only
that part quantized; all three together are the isolated figure; on layers where the answer is known
(an input outlier that KL clips, a per-tensor weight with one huge channel) the right part is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.error_chart import LOG_TICKS, log_ticks, parts_figure
from quantviz.metrics import ErrorFigures
from quantviz.model import load_model
from quantviz.sensitivity import ErrorParts, LayerError, analyze
from quantviz.sensitivity_plan import PARTS
from quantviz.table import CalibrationTable, calibrate_model

from .graphs import IR_VERSION, OPSET
from .test_sensitivity import OUT, Tiny, as_engine, conv2d, cos_snr_mse, fq, fq_bias, fq_weight, make_tiny

F32 = np.float32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return make_tiny(tmp_path_factory)


def test_parts_equal_numpy_on_the_tiny_graph(tiny: Tiny) -> None:
    model, source, table, arrays, x, _, ref, _ = tiny
    report = analyze(model, table, source, batch_size=4)
    e = table.tensors
    ws = {n: np.asarray(v["scales"], dtype=F32) for n, v in table.weights.items()}
    xd = x.astype(np.float64)
    w, b = arrays["w"].astype(np.float64), arrays["b"].astype(np.float64)
    W, B = arrays["W"].astype(np.float64), arrays["B"].astype(np.float64)

    def q(v: np.ndarray, name: str) -> np.ndarray:
        return fq(v, e[name].scale)

    want = {
        "conv": {
            "input": conv2d(q(xd, "x"), w, b),
            "weights": conv2d(xd, fq_weight(arrays["w"], ws["w"], 0), fq_bias(arrays["b"], e["x"].scale, ws["w"])),
            "output": q(conv2d(xd, w, b), "c"),
        },
        "relu": {"input": np.maximum(q(ref["c"], "c"), 0), "weights": None, "output": q(ref["r"], "r")},
        "gemm": {
            "input": q(ref["f"], "f") @ W.T + B,
            "weights": ref["f"] @ fq_weight(arrays["W"], ws["W"], 0).T + fq_bias(arrays["B"], e["f"].scale, ws["W"]),
            "output": q(ref["y"], "y"),
        },
    }
    by_name = {le.layer: le for le in report.layers}
    for layer, parts in want.items():
        got = by_name[layer].parts
        assert got is not None
        for part, value in parts.items():
            fig = getattr(got, part)
            if value is None:
                assert fig is None, (layer, part)  # a Relu has no weights to quantize
                continue
            cos, snr, _ = cos_snr_mse(as_engine(layer, ref[OUT[layer]]), as_engine(layer, value))
            assert fig.cosine == pytest.approx(cos, abs=1e-8), (layer, part)
            assert fig.snr_db == pytest.approx(snr, abs=1e-4), (layer, part)


def test_parts_recombine_to_the_isolated_error(tiny: Tiny) -> None:
    """Quantizing all three parts is the isolated copy itself, and the parts' noise powers add up to
    the isolated one (the three roundings are nearly independent)."""
    model, source, table, *_ = tiny
    with_parts = analyze(model, table, source)
    without = analyze(model, table, source, parts=False)
    for a, b in zip(with_parts.layers, without.layers, strict=True):
        assert b.parts is None
        assert a.isolated == b.isolated and a.accumulated == b.accumulated  # the parts change nothing else
        assert a.parts is not None
        noise = [f.mse for _, f in a.parts.items()]
        if a.layer in ("conv", "gemm"):
            assert sum(noise) == pytest.approx(a.isolated.mse, rel=0.35), a.layer
        elif a.layer == "relu":
            # the Relu's input and output carry one scale: rounding before or after it is the same
            # rounding, so each part alone is already the whole error
            assert noise[0] == pytest.approx(a.isolated.mse, rel=1e-9) and noise[1] == pytest.approx(a.isolated.mse, rel=1e-9)


def _conv_model(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph(
        [
            # x -> Mul(1) -> xi -> Conv: the Conv reads an inner tensor, which the method calibrates as
            # it likes (a graph input itself always keeps its MinMax range)
            helper.make_node("Mul", ["x", "one"], ["xi"], name="pre"),
            helper.make_node("Conv", ["xi", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1], 8, 8])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", w.shape[0], 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.ones(1, F32), "one")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _expected_parts(table: CalibrationTable, x: np.ndarray, w: np.ndarray, b: np.ndarray, w_scale: np.ndarray) -> dict[str, float]:
    """The cosine of each part, computed with numpy from the table's scales."""
    xd, wd, bd = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    ref = conv2d(xd, wd, bd)
    s_x, s_c = table.tensors["xi"].scale, table.tensors["c"].scale
    parts = {
        "input": conv2d(fq(xd, s_x), wd, bd),
        "weights": conv2d(xd, fq_weight(w, w_scale, 0), fq_bias(b, s_x, w_scale)),
        "output": fq(ref, s_c),
    }
    return {k: cos_snr_mse(ref, v)[0] for k, v in parts.items()}


def _analyse(
    tmp_path: Path, w: np.ndarray, b: np.ndarray, x: np.ndarray, method: str, per_channel: bool
) -> tuple[CalibrationTable, LayerError]:
    model = load_model(_conv_model(w, b).SerializeToString())
    np.savez(tmp_path / "x.npz", x=x)
    source = open_source(tmp_path / "x.npz", model.inputs)
    stats = collect(model, source, CollectConfig(batch_size=16))
    table = calibrate_model(model, stats, method, per_channel=per_channel)
    report = analyze(model, table, source, per_channel=per_channel)
    (le,) = [e for e in report.layers if e.layer == "conv"]
    return table, le


def test_an_input_outlier_that_kl_clips_makes_the_input_part_worst(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(F32)
    b = (rng.standard_normal(4) * 0.1).astype(F32)
    x = rng.standard_normal((24, 3, 8, 8)).astype(F32)
    x[:, 0, 4, 4] = 60.0  # one huge value per sample: KL clips it, MinMax would keep it
    table, le = _analyse(tmp_path, w, b, x, "kl", per_channel=True)
    assert table.tensors["xi"].threshold < 20  # KL did clip the input
    assert table.tensors["c"].method == "minmax"  # a graph output keeps its range
    w_scale = np.abs(w).reshape(4, -1).max(axis=1).astype(F32) / F32(127)
    want = _expected_parts(table, x, w, b, w_scale)
    assert le.parts is not None
    for part, cos in want.items():
        assert getattr(le.parts, part).cosine == pytest.approx(cos, abs=1e-7), part
    assert min(want, key=lambda k: want[k]) == "input" and le.parts.worst == "input"
    assert le.parts.input is not None and le.parts.weights is not None and le.parts.output is not None
    assert le.parts.input.cosine < 0.99 < min(le.parts.weights.cosine, le.parts.output.cosine)


def test_a_per_tensor_weight_with_one_huge_channel_makes_the_weights_part_worst(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.05).astype(F32)
    # output channel 0 spans 25x the others (one per-tensor scale leaves them a few levels), on an
    # input channel 25x smaller, so the output itself has an ordinary range
    w[0, 0] *= 25.0
    b = np.zeros(4, dtype=F32)
    x = rng.standard_normal((24, 3, 8, 8)).astype(F32)
    x[:, 0] /= 25.0
    table, le = _analyse(tmp_path, w, b, x, "minmax", per_channel=False)
    w_scale = np.full(4, np.abs(w).max() / 127, dtype=F32)
    want = _expected_parts(table, x, w, b, w_scale)
    assert le.parts is not None
    for part, cos in want.items():
        assert getattr(le.parts, part).cosine == pytest.approx(cos, abs=1e-7), part
    assert min(want, key=lambda k: want[k]) == "weights" and le.parts.worst == "weights"
    # per-channel weights remove that part's error
    _, per_channel = _analyse(tmp_path, w, b, x, "minmax", per_channel=True)
    assert per_channel.parts is not None and per_channel.parts.weights is not None and le.parts.weights is not None
    assert per_channel.parts.weights.cosine > le.parts.weights.cosine
    assert PARTS == ("input", "weights", "output")


def test_the_method_that_fixes_the_input_part(tmp_path: Path) -> None:
    """KL clips the input's outlier; MinMax keeps it: among the candidates, a method that does not clip
    it wins, and each candidate's figure is the numpy figure with that method's input scale."""
    from quantviz.calib import METHODS, MethodConfig
    from quantviz.errors import CancelledError
    from quantviz.progress import CancelToken, Step
    from quantviz.review import Review
    from quantviz.sensitivity_fix import fix_candidates

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(F32)
    b = (rng.standard_normal(4) * 0.1).astype(F32)
    x = rng.standard_normal((24, 3, 8, 8)).astype(F32)
    x[:, 0, 4, 4] = 60.0
    model = load_model(_conv_model(w, b).SerializeToString())
    np.savez(tmp_path / "x.npz", x=x)
    source = open_source(tmp_path / "x.npz", model.inputs)
    stats = collect(model, source, CollectConfig(batch_size=16))
    steps: list[Step] = []
    fix = fix_candidates(model, stats, Review(default_method="kl"), "conv", "input", source, ["kl", "minmax", "percentile"], steps=steps.append)
    assert fix.tensors == ("xi",)
    xd, wd, bd = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    ref = conv2d(xd, wd, bd)
    for m, got in fix.by_method.items():
        t = METHODS[m](stats.tensors["xi"], MethodConfig()).threshold
        want = cos_snr_mse(ref, conv2d(fq(xd, float(F32(t) / F32(127))), wd, bd))[0]
        assert got.cosine == pytest.approx(want, abs=1e-7), m
    assert fix.current == fix.by_method["kl"]  # the review as it is: KL everywhere
    assert fix.best == "minmax" and fix.by_method["minmax"].cosine > 0.999 > fix.current.cosine
    assert steps[-1] == Step(steps[-1].phase, 4 * 24, 4 * 24, "samples") and "Percentile" in steps[-1].phase
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        fix_candidates(model, stats, Review(), "conv", "input", source, ["minmax"], cancel=token)


def test_the_parts_chart_labels_one_decade_each_when_the_parts_differ_by_many() -> None:
    """On the 278-layer model a layer's input alone gives 1 - cos 0.46 and its weights 3e-06: five
    decades in a chart a third of the page wide, where 1-2-5 labels ran together ('2e-65e-61e-5')."""
    def fig(c: float) -> ErrorFigures:
        return ErrorFigures(cosine=c, snr_db=0.0, mse=0.0, samples=8)

    spread = LayerError("l", "Conv", "o", fig(1 - 4.6e-1), fig(1 - 4.6e-1), ErrorParts(fig(1 - 4.6e-1), fig(1 - 2.9e-6), fig(1 - 1.7e-5)))
    axis = parts_figure(spread).layout.xaxis
    assert axis.type == "log" and axis.dtick == 1 and axis.tickformat == ".0e"  # 1e-06, 1e-05, ... 1e-01: six labels
    close = LayerError("l", "Conv", "o", fig(1 - 4e-4), fig(1 - 4e-4), ErrorParts(fig(1 - 1e-4), fig(1 - 2e-4), fig(1 - 3e-4)))
    assert parts_figure(close).layout.xaxis.dtick == LOG_TICKS["dtick"]  # within two decades: 1, 2, 5 in each
    assert log_ticks([1e-12, 1.0, None, float("nan")])["dtick"] == 2  # twelve decades: a label every other one
    assert log_ticks([]) == LOG_TICKS
