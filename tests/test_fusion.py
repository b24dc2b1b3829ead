"""Fusion groups (shared scales) and requantization points on tiny graphs, and the table built from them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.errors import QuantvizError
from quantviz.export.qv_json import dumps, loads
from quantviz.fusion import analyse, requant_points
from quantviz.model import LoadedModel, load_model
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable, TensorEntry, calibrate_model, check_table_against_model
from tests import graphs

RNG = np.random.default_rng(0)


def build(nodes: list[onnx.NodeProto], arrays: dict[str, np.ndarray], outputs: list[str]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def conv(name: str, x: str, y: str, w: str = "w") -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1])


W = {"w": RNG.standard_normal((2, 2, 3, 3))}
BN = {"gamma": RNG.uniform(0.5, 2, 2), "beta": RNG.standard_normal(2), "mean": RNG.standard_normal(2), "var": RNG.uniform(0.5, 2, 2)}


def conv_relu() -> onnx.ModelProto:
    """x -> Conv(w, b = -3) -> c -> Relu -> y   (the bias makes c mostly negative)"""
    node = helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])
    return build([node, helper.make_node("Relu", ["c"], ["y"], name="relu")], {**W, "b": np.full(2, -3.0)}, ["y"])


def test_conv_relu_shares_the_post_activation_scale() -> None:
    info = analyse(conv_relu())
    (g,) = info.groups
    assert (g.producer, g.activation, g.pre_activation, g.post_activation, g.scale_from) == ("conv", "relu", "c", "y", "y")
    assert info.shared() == {"c": ("y",), "y": ("c",)}
    assert info.scale_source() == {"c": "y"}
    assert info.joins == ()


def test_conv_bn_relu_fuses_after_folding() -> None:
    # x -> Conv -> c -> BN -> b -> Relu -> y
    proto = build(
        [
            conv("conv", "x", "c"),
            helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="bn"),
            helper.make_node("Relu", ["b"], ["y"], name="relu"),
        ],
        {**W, **BN},
        ["y"],
    )
    info = analyse(proto)
    (g,) = info.groups
    assert (g.producer, g.pre_activation, g.post_activation) == ("conv", "b", "y")
    assert info.fold.renamed == {"c": "b"}


def test_conv_with_two_consumers_shares_nothing() -> None:
    # x -> Conv -> c -> Relu -> y ; c -> Sigmoid -> s
    proto = build(
        [conv("conv", "x", "c"), helper.make_node("Relu", ["c"], ["y"], name="relu"), helper.make_node("Sigmoid", ["c"], ["s"], name="sig")],
        W,
        ["y", "s"],
    )
    assert analyse(proto).groups == ()
    # Nor when the Conv output is itself a graph output.
    p2 = conv_relu()
    p2.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    assert analyse(p2).groups == ()


@pytest.mark.parametrize(("lo", "hi", "fused"), [(0.0, 6.0, True), (-1.0, 1.0, False), (0.0, None, True)])
def test_clip_fuses_only_when_relu_like(lo: float, hi: float | None, fused: bool) -> None:
    # x -> Conv -> c -> Clip(lo, hi) -> y
    arrays = {**W, "lo": np.array(lo)}
    inputs = ["c", "lo"]
    if hi is not None:
        arrays["hi"] = np.array(hi)
        inputs.append("hi")
    proto = build([conv("conv", "x", "c"), helper.make_node("Clip", inputs, ["y"], name="clip")], arrays, ["y"])
    assert bool(analyse(proto).groups) is fused


def test_leaky_relu_does_not_fuse() -> None:
    proto = build([conv("conv", "x", "c"), helper.make_node("LeakyRelu", ["c"], ["y"], name="lrelu")], W, ["y"])
    assert analyse(proto).groups == ()


def test_add_and_concat_are_listed_with_their_scales() -> None:
    # graphs.conv_bn_relu: bn_out feeds Relu AND Add, so nothing fuses; Add(relu_out, bn_out), Concat(relu_out, add_out)
    info = analyse(graphs.conv_bn_relu())
    assert info.groups == ()
    assert [(j.node, j.op_type, j.inputs, j.output) for j in info.joins] == [
        ("add", "Add", ("relu_out", "bn_out"), "add_out"),
        ("concat", "Concat", ("relu_out", "add_out"), "out"),
    ]
    scales = {"relu_out": 0.02, "bn_out": 0.03, "add_out": 0.02, "out": 0.05}
    add, cat = requant_points(info, scales)
    assert add.input_scales == (0.02, 0.03) and add.differ and add.max_ratio == pytest.approx(1.5)
    assert cat.input_scales == (0.02, 0.02) and not cat.differ and cat.output_scale == 0.05
    # A missing scale (kept in float) is None, never a made-up value.
    (a2, _) = requant_points(info, {"relu_out": 0.02})
    assert a2.input_scales == (0.02, None) and not a2.differ


def _table(proto: onnx.ModelProto, method: str = "minmax") -> tuple[LoadedModel, CalibrationStats, CalibrationTable]:
    model = load_model(proto.SerializeToString(), name="tiny.onnx")
    stats = collect(model, open_source("synthetic:16", model.inputs), CollectConfig(bins=256))
    return model, stats, calibrate_model(model, stats, method)


def test_table_shares_scales_both_ways() -> None:
    model, stats, table = _table(conv_relu())
    c, y = table.tensors["c"], table.tensors["y"]
    assert (c.threshold, c.scale, c.min, c.max, c.zero_point) == (y.threshold, y.scale, y.min, y.max, y.zero_point)
    assert c.shared_with == ("y",) and y.shared_with == ("c",)
    assert c.scale_from == "y"
    # The conv output's own range is kept for the UI: abs-max of c, larger than the ReLU's (negatives).
    assert c.extra["unshared"]["threshold"] == pytest.approx(stats.tensors["c"].absmax)
    assert c.extra["unshared"]["threshold"] > y.threshold
    assert y.threshold == pytest.approx(stats.tensors["y"].max)
    assert table.settings["fusion_groups"][0]["post_activation"] == "y"
    # Lossless JSON round trip with the new content.
    assert loads(dumps(table)) == table


def test_table_records_requant_points_and_folded_tensors() -> None:
    _, stats, table = _table(graphs.conv_bn_relu())
    (add, cat) = table.settings["requant_points"]
    assert add["node"] == "add" and add["input_scales"] == [table.tensors["relu_out"].scale, table.tensors["bn_out"].scale]
    assert add["differ"] is (table.tensors["relu_out"].scale != table.tensors["bn_out"].scale)
    assert cat["inputs"] == ["relu_out", "add_out"]
    assert table.tensors["conv_out"].folded_into == "bn_out"
    assert table.settings["folded_batchnorm"][0]["batchnorm"] == "bn"


def test_table_for_another_model_is_refused() -> None:
    model, _, table = _table(conv_relu())
    other = load_model(graphs.conv_bn_relu().SerializeToString(), name="other.onnx")
    with pytest.raises(QuantvizError, match=r"lacks: 'c'.*another model"):
        check_table_against_model(table, other)
    check_table_against_model(table, model)  # its own model passes
    many = table
    for i in range(8):
        many = many.with_entry(f"ghost{i}", TensorEntry("minmax", -1, 1, 1, 1 / 127, 0))
    with pytest.raises(QuantvizError, match=r"8 tensors .*'ghost4' \(and 3 more\)"):
        check_table_against_model(many, model)
