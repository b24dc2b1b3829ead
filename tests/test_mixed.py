"""Mixed precision to a target (quantviz.mixed) and the fallbacks in the QDQ model (quantviz.fallback).

The planted model:  x[N,8] (feature 0 a thousand times wider) -> Gemm p (its weight for feature 0 a
thousand times smaller, so its output is balanced) -> Relu -> Gemm q -> Relu -> Gemm r -> y[N,10].
Quantizing p's input with one int8 scale set by feature 0 rounds the seven other features to zero: p
cannot be quantized, every other layer can. Expected figures come from plain onnxruntime sessions and
numpy, never from quantviz.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import CalibrationSource, open_source
from quantviz.errors import QuantvizError
from quantviz.fallback import MS_DOMAIN, apply_fallbacks, int16_domain, layer_macs
from quantviz.mixed import (
    Evaluator,
    int8_base,
    mixed_qdq_model,
    mixed_table,
    parse_target,
    run_search,
    table_fallbacks,
)
from quantviz.model import LoadedModel, load_model
from quantviz.qdq import build
from quantviz.table import CalibrationTable, calibrate_model
from tests.graphs import IR_VERSION, OPSET

SAMPLES = 256
OUTLIER = 1000.0


def planted_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    wp = rng.standard_normal((16, 8)).astype(np.float32) * 0.5
    wp[:, 0] /= OUTLIER
    wq = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    wr = rng.standard_normal((10, 16)).astype(np.float32) * 0.3
    inits = [
        numpy_helper.from_array(wp, "wp"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "bp"),
        numpy_helper.from_array(wq, "wq"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "bq"),
        numpy_helper.from_array(wr, "wr"),
        numpy_helper.from_array(np.zeros(10, np.float32), "br"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "wp", "bp"], ["p_out"], name="p", transB=1),
        helper.make_node("Relu", ["p_out"], ["p_relu"], name="p_relu"),
        helper.make_node("Gemm", ["p_relu", "wq", "bq"], ["q_out"], name="q", transB=1),
        helper.make_node("Relu", ["q_out"], ["q_relu"], name="q_relu"),
        helper.make_node("Gemm", ["q_relu", "wr", "br"], ["y"], name="r", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(m)
    return m


def planted_data(seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((SAMPLES, 8)).astype(np.float32)
    x[:, 0] *= OUTLIER
    return x


def npz(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x)
    return buf.getvalue()


# the planted fixture: the model, its minmax table, its calibration source and the data
Planted = tuple[LoadedModel, CalibrationTable, CalibrationSource, np.ndarray]


@pytest.fixture(scope="module")
def planted() -> Planted:
    model = load_model(planted_model().SerializeToString(), name="planted.onnx")
    x = planted_data()
    source = open_source(npz(x), model.inputs, name="planted.npz")
    stats = collect(model, source, CollectConfig())
    table = calibrate_model(model, stats, "minmax")
    return model, table, source, x


def _float_out(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])


def _qdq_out(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # Q/DQ as the spec says
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the per-sample cosine (written out here, independent of quantviz.metrics)."""
    num = np.sum(a.astype(np.float64) * b, axis=1)
    den = np.linalg.norm(a.astype(np.float64), axis=1) * np.linalg.norm(b.astype(np.float64), axis=1)
    return float(np.mean(num / den))


# ---------------------------------------------------------------------------------------------
# Targets


@pytest.mark.parametrize(
    ("text", "kind", "value", "higher"),
    [
        ("cosine=0.999", "cosine", 0.999, True),
        ("snr=30", "snr", 30.0, True),
        ("top1-drop=0.5", "top1-drop", 0.5, False),
        ("metric=tests.test_mixed:mean_abs_error<=0.1", "metric", 0.1, False),
        ("metric=tests.test_mixed:agreement>=0.9", "metric", 0.9, True),
    ],
)
def test_targets_parse(text: str, kind: str, value: float, higher: bool) -> None:
    t = parse_target(text)
    assert (t.kind, t.value, t.higher_is_better) == (kind, value, higher)
    assert parse_target(t.spec) == t
    assert t.met(value)
    assert t.met(value + 1) is higher and t.met(value - 1) is not higher
    assert not t.met(math.nan)


@pytest.mark.parametrize(
    "text",
    [
        "cosine",
        "cos=0.9",
        "cosine=abc",
        "cosine=2",
        "snr=inf",
        "top1-drop=-1",
        "metric=tests.test_mixed:agreement",
        "metric=nomodule>=1",
    ],
)
def test_bad_targets_say_one_sentence(text: str) -> None:
    with pytest.raises(QuantvizError) as e:
        parse_target(text)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def mean_abs_error(ref: dict[str, np.ndarray], test: dict[str, np.ndarray], labels: np.ndarray | None) -> float:
    return float(np.mean(np.abs(ref["y"] - test["y"])))


def agreement(ref: dict[str, np.ndarray], test: dict[str, np.ndarray], labels: np.ndarray | None) -> float:
    return float(np.mean(np.argmax(ref["y"], axis=1) == np.argmax(test["y"], axis=1)))


# ---------------------------------------------------------------------------------------------
# Fallbacks in the QDQ model


def test_float_fallback_of_every_layer_is_the_float_model(planted: Planted) -> None:
    model, table, _, x = planted
    qdq = build(model, table)
    weights = {i.name: i for i in qdq.prepared.proto.graph.initializer}
    layers = {n.name: "float" for n in qdq.proto.graph.node if n.op_type in ("Gemm", "Relu")}
    edited = apply_fallbacks(qdq.proto, layers, weights)
    assert not [n for n in edited.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    np.testing.assert_allclose(_qdq_out(edited, x), _float_out(model.proto, x), rtol=1e-5, atol=1e-4)


def test_int16_fallback_runs_in_onnxruntime_and_beats_int8(planted: Planted) -> None:
    model, table, _, x = planted
    qdq = build(model, table)
    assert int16_domain(qdq.proto) == MS_DOMAIN  # opset 17 < 21: onnxruntime's own int16 Q/DQ
    weights = {i.name: i for i in qdq.prepared.proto.graph.initializer}
    edited = apply_fallbacks(qdq.proto, {"p": "int16", "p_relu": "int16"}, weights)
    onnx.checker.check_model(edited)
    q16 = [n for n in edited.graph.node if n.op_type == "QuantizeLinear" and n.domain == MS_DOMAIN]
    assert q16
    zp = {i.name: numpy_helper.to_array(i) for i in edited.graph.initializer}
    assert all(zp[n.input[2]].dtype == np.int16 for n in q16)
    ref = _float_out(model.proto, x)
    int8 = _cosine(ref, _qdq_out(qdq.proto, x))
    int16 = _cosine(ref, _qdq_out(edited, x))
    as_float = _cosine(ref, _qdq_out(apply_fallbacks(qdq.proto, {"p": "float", "p_relu": "float"}, weights), x))
    # p's input needs 15 bits: int8 loses the seven small features, int16 keeps them; p's int8 weights
    # for feature 0 (a thousand times smaller than the rest of their row) still cost what float avoids
    assert int8 < 0.5 < 0.9 < int16 < 0.99 < as_float


def test_int16_pair_matches_numpy(planted: Planted) -> None:
    """p in int16 reads x rounded on T / 32767 steps and computes with its int8 weights (dequantized by
    onnxruntime): the Gemm is recomputed here with numpy from those."""
    model, table, _, x = planted
    qdq = build(model, table)
    weights = {i.name: i for i in qdq.prepared.proto.graph.initializer}
    edited = apply_fallbacks(qdq.proto, {"p": "int16"}, weights)
    p = next(n for n in edited.graph.node if n.name == "p")
    w_name, b_name = p.input[1], p.input[2]
    for name in ("p_out", w_name, b_name):
        edited.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(edited.SerializeToString(), so, providers=["CPUExecutionProvider"])
    p_out, w, b = sess.run(["p_out", w_name, b_name], {"x": x})
    s16 = np.float32(table.tensors["x"].threshold / 32767)  # the same threshold on int16 steps
    xq = (np.clip(np.round(x / s16), -32768, 32767) * s16).astype(np.float32)
    # a value on a rounding boundary may round the other way (one step, s16 x |w| < 2e-4)
    np.testing.assert_allclose(p_out, xq @ w.T + b, rtol=1e-4, atol=2e-4)
    np.testing.assert_array_equal(w, w)  # int8 weights: at most 255 distinct values per row
    assert max(len(np.unique(row)) for row in w) <= 255


def test_macs_of_gemms() -> None:
    macs = layer_macs(planted_model())
    assert macs == {"p": 16 * 8, "q": 16 * 16, "r": 10 * 16}


# ---------------------------------------------------------------------------------------------
# The search


def test_search_finds_the_planted_layer_first_and_stops(planted: Planted) -> None:
    model, table, source, x = planted
    target = parse_target("cosine=0.995")
    result, _ = run_search(model, table, source, target)
    assert result.order[0] == "p" or "p" in result.order[0]
    adds = [s for s in result.steps if s.action in ("add", "bisect")]
    assert len(adds) == 1 and adds[0].met  # one unit added, and the target met at once
    assert result.reached
    assert {f.layer for f in result.fallbacks} == {"p", "p_relu"}  # p and the Relu sharing its scale
    assert [s.action for s in result.steps] == ["int8", "add", "keep"]
    # the figures are those of plain onnxruntime runs of the exported model
    ref = _float_out(model.proto, x)
    exported = mixed_qdq_model(model, mixed_table(table, result))
    assert _cosine(ref, _qdq_out(build(model, table).proto, x)) == pytest.approx(result.int8_value, abs=1e-6)
    assert _cosine(ref, _qdq_out(exported, x)) == pytest.approx(result.final_value, abs=1e-6)
    assert result.int8_value < 0.9 and result.final_value >= 0.995
    assert result.steps[-1].value == pytest.approx(result.int8_value)  # taking p back to int8 is step 0 again
    assert "p" in result.fallbacks[0].why or "missing" in result.fallbacks[0].why


def test_removal_takes_back_what_is_not_needed(planted: Planted) -> None:
    """Ordered badly on purpose (p last), the one-at-a-time search adds everything, then the removal
    pass returns every unit but p to int8."""
    from quantviz.mixed import Unit, search

    model, table, source, _ = planted
    ev = Evaluator(model, table, source, parse_target("cosine=0.995"))
    units = [
        Unit("r", ("r",), ("y",), 1.0, 1.0, 160),
        Unit("q", ("q", "q_relu"), ("q_out", "q_relu"), 1.0, 1.0, 256),
        Unit("p", ("p", "p_relu"), ("p_out", "p_relu"), 1.0, 1.0, 128),
    ]
    result = search(ev, units, gallop=False)
    assert [s.action for s in result.steps] == ["int8", "add", "add", "add", "keep", "remove", "remove"]
    assert {f.layer for f in result.fallbacks} == {"p", "p_relu"}
    assert result.final_macs_share == pytest.approx(128 / (160 + 256 + 128))


def test_metric_function_target(planted: Planted) -> None:
    model, table, source, x = planted
    result, _ = run_search(model, table, source, parse_target("metric=tests.test_mixed:mean_abs_error<=0.05"))
    assert result.reached and {f.layer for f in result.fallbacks} >= {"p"}
    ref = _float_out(model.proto, x)
    got = _qdq_out(mixed_qdq_model(model, mixed_table(table, result)), x)
    assert float(np.mean(np.abs(ref - got))) == pytest.approx(result.final_value, rel=1e-5)


def test_top1_drop_needs_labels(planted: Planted) -> None:
    model, table, source, _ = planted
    with pytest.raises(QuantvizError, match="needs labels"):
        Evaluator(model, table, source, parse_target("top1-drop=1"))


def test_table_carries_fallbacks_and_trace(planted: Planted, tmp_path: Path) -> None:
    from quantviz.export.ncnn import dumps_ncnn, loads_ncnn
    from quantviz.export.qv_json import read_json, write_json
    from quantviz.export.tensorrt import dumps_trt

    model, table, source, _ = planted
    result, _ = run_search(model, table, source, parse_target("cosine=0.995"))
    mixed = mixed_table(table, result)
    write_json(mixed, tmp_path / "t.json")
    back = read_json(tmp_path / "t.json")
    assert table_fallbacks(back) == {"p": "float", "p_relu": "float"}
    assert [s["action"] for s in back.settings["mixed"]["trace"]] == ["int8", "add", "keep"]
    assert back.tensors["p_relu"].float_kept and not back.tensors["q_relu"].float_kept
    assert int8_base(back).tensors["p_relu"].float_kept is False
    trt = dumps_trt(back)
    assert "p_relu:" not in trt and "p_out:" not in trt and "q_relu:" in trt
    ncnn = dumps_ncnn(back, model)
    lines = ncnn.splitlines()
    assert lines[0].startswith("# quantviz mixed precision")
    assert any(line.startswith("#p ") for line in lines)  # p's own line commented: p stays float in ncnn
    assert any(line.startswith("q ") for line in lines)  # q reads p_relu but stays int8
    assert loads_ncnn(ncnn, model).tensors["x"].float_kept


def test_a_click_on_a_tradeoff_point_picks_that_step(planted: Planted) -> None:
    """Each point of the trade-off chart, clicked (the selection event st.plotly_chart returns), picks
    the step measured at that point's place; a click on the greedy path's line, or nothing, picks none."""
    from quantviz.mixed import Unit, search
    from quantviz.plots import picked_step, tradeoff_figure

    model, table, source, _ = planted
    ev = Evaluator(model, table, source, parse_target("cosine=0.995"))
    units = [
        Unit("r", ("r",), ("y",), 1.0, 1.0, 160),
        Unit("q", ("q", "q_relu"), ("q_out", "q_relu"), 1.0, 1.0, 256),
        Unit("p", ("p", "p_relu"), ("p_out", "p_relu"), 1.0, 1.0, 128),
    ]
    result = search(ev, units, gallop=False)  # 7 steps: int8, 3 adds, keep, 2 removes
    doc = mixed_table(table, result).settings["mixed"]
    n = len(result.steps)
    for x_axis in ("layers", "macs"):
        fig = tradeoff_figure(doc, x_axis)
        picked: list[int] = []
        for curve, trace in enumerate(fig.data):
            for j, (x, y) in enumerate(zip(trace.x, trace.y, strict=True)):
                point = {"curve_number": curve, "point_number": j, "point_index": j, "x": x, "y": y}
                if trace.customdata is None:  # the greedy path: no step
                    assert picked_step({"selection": {"points": [point]}}, n) is None
                    continue
                steps = {
                    picked_step({"selection": {"points": [{**point, "customdata": custom}]}}, n)
                    for custom in (trace.customdata[j], [trace.customdata[j]])  # a number, or a list of one
                }
                assert len(steps) == 1
                step = steps.pop()
                assert step is not None
                s = result.steps[step]
                place = s.layers_out if x_axis == "layers" else 100 * s.macs_share
                assert (x, y) == pytest.approx((place, s.value))
                picked.append(step)
        assert sorted(picked) == list(range(n))  # every step is a point, and every point a step
    assert picked_step(None, n) is None
    assert picked_step({"selection": {"points": []}}, n) is None
    assert picked_step({"selection": {"points": [{"customdata": n}]}}, n) is None  # no such step
    assert picked_step({"selection": {"points": [{"customdata": True}]}}, n) is None
    assert picked_step({"selection": {"points": [{"x": 1.0}, {"customdata": 2}]}}, n) == 2
    # a step applied to a review is read back from the review: where it came from, and its layers
    from quantviz.mixed import applied_in_review, review_with_configuration
    from quantviz.review import Review

    assert applied_in_review(Review(), doc) == (None, [])
    for step in range(n):
        review, marked = review_with_configuration(Review(), doc, step)
        want = [lay for lay in doc["layer_tensors"] if lay in result.steps[step].fallbacks]
        assert applied_in_review(review, doc) == ((f"step {step}", want) if want else (None, []))
        assert {doc["layer_tensors"][lay] for lay in want} == {t for t, c in review.choices.items() if c.float_kept}
    final, _ = review_with_configuration(Review(), doc)
    assert applied_in_review(final, doc) == ("final configuration", ["p", "p_relu"])
    other = {**doc, "target": "cosine>=0.5"}  # another search's configuration is not this one's
    assert applied_in_review(final, other) == (None, [])


def test_tradeoff_chart_keeps_far_steps_off_its_axis() -> None:
    """A step far beyond the target (a model almost all in float: 140 dB against 50) would squash the
    others into a line: the y axis spans the target and the steps near it, and a note counts the rest."""
    from quantviz.plots import tradeoff_figure

    def step(i: int, action: str, out: int, value: float) -> dict[str, object]:
        return {"step": i, "action": action, "layers_out": out, "macs_share": out / 20, "value": value, "fallbacks": []}

    values = [44.6, 46.0, 47.5, 140.0, 51.3, 49.0]
    actions = ["int8", "add", "add", "add", "bisect", "keep"]
    doc = {"target": "snr>=50", "target_value": 50.0, "trace": [step(i, a, i, v) for i, (a, v) in enumerate(zip(actions, values, strict=True))]}
    fig = tradeoff_figure(doc)
    lo, hi = fig.layout.yaxis.range
    assert lo < min(44.6, 50.0) and max(51.3, 50.0) < hi < 140.0
    notes = [a.text for a in fig.layout.annotations if "off the chart" in a.text]
    assert len(notes) == 1 and notes[0].startswith("1 step off the chart") and "140" in notes[0]
    # every step near the target: the axis is left to plotly
    near = {**doc, "trace": [step(i, a, i, min(v, 52.0)) for i, (a, v) in enumerate(zip(actions, values, strict=True))]}
    fig = tradeoff_figure(near)
    assert fig.layout.yaxis.range is None and not [a for a in fig.layout.annotations if "off the chart" in a.text]


# ---------------------------------------------------------------------------------------------
# digits_resnet: one point of top-1, reached, and the exported QDQ model scores what the search said


@pytest.mark.slow
def test_digits_resnet_reaches_one_point_of_top1() -> None:
    from quantviz.data import default_labels
    from quantviz.export.qdq_model import qdq_model_bytes
    from tests.conftest import ROOT

    samples = ROOT / "sample_models"
    model = load_model(samples / "digits_resnet.onnx")
    stats = collect(model, open_source(samples / "digits32_calib.npz", model.inputs), CollectConfig())
    table = calibrate_model(model, stats, "kl")  # TensorRT's KL: 3.3 points of top-1 lost all in int8
    eval_path = samples / "digits32_eval.npz"
    source = open_source(eval_path, model.inputs)
    labels = default_labels(eval_path)
    result, _ = run_search(model, table, source, parse_target("top1-drop=1"), labels=labels, batch_size=540, order_samples=64)
    assert result.int8_value > 1 and result.reached and result.final_value <= 1
    assert 0 < len(result.fallbacks) < 20
    # the exported model, run by onnxruntime on the labelled evaluation set, scores what the search reported
    proto = onnx.load_from_string(qdq_model_bytes(mixed_table(table, result), model))
    data = np.load(eval_path)
    x, y = data["input"], data["label"]
    float_acc = float(np.mean(np.argmax(_float_out_named(model.proto, x), axis=1) == y))
    quant_acc = float(np.mean(np.argmax(_qdq_out_named(proto, x), axis=1) == y))
    assert result.float_accuracy == pytest.approx(float_acc)
    assert 100 * (float_acc - quant_acc) == pytest.approx(result.final_value, abs=1e-9)
    assert 100 * (float_acc - quant_acc) <= 1


def _float_out_named(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def _qdq_out_named(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # Q/DQ as the spec says
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])
