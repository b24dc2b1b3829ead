"""ncnn int8 table: inverse scales printed %f with a trailing space, layer names from the model,
one line per consuming layer, '#' lines kept in float, weight lines first, bad files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.errors import QuantvizError
from quantviz.export.ncnn import dumps_ncnn, loads_ncnn, ncnn_layers, read_ncnn_table, write_ncnn_table
from quantviz.model import LoadedModel, load_model
from quantviz.table import CalibrationTable, TensorEntry

from .graphs import IR_VERSION, OPSET


def branchy() -> onnx.ModelProto:
    """x -> Conv "conv1" -> Relu -> r1 -> {Conv "conv_a" -> ya, unnamed Conv -> yb} -> Add -> GAP -> Flatten -> Gemm "fc" -> out."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "wb"),
        numpy_helper.from_array(rng.standard_normal((2, 2)).astype(np.float32), "wf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wa"], ["ya"], name="conv_a"),
        helper.make_node("Conv", ["r1", "wb"], ["yb"]),  # unnamed: onnx2ncnn names the layer after "yb"
        helper.make_node("Add", ["ya", "yb"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["out"], name="fc", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(branchy().SerializeToString(), name="branchy.onnx")


def sym(t: float, **kw: Any) -> TensorEntry:
    return TensorEntry("kl", -t, t, t, float(np.float32(t) / np.float32(127)), 0, **kw)


THRESHOLDS = {"x": 127 / 42.717117, "r1": 2.5, "f": 6.0, "c1": 3.0}  # c1 feeds no Conv/Gemm: no line


def table(entries: dict[str, TensorEntry], weights: dict[str, dict[str, Any]] | None = None) -> CalibrationTable:
    return CalibrationTable("branchy.onnx", "", {}, entries, weights=weights or {})


def test_layer_map(model: LoadedModel) -> None:
    assert ncnn_layers(model) == {"conv1": "x", "conv_a": "r1", "yb": "r1", "fc": "f"}


def test_golden_lines_and_multi_consumer(model: LoadedModel) -> None:
    text = dumps_ncnn(table({n: sym(t) for n, t in THRESHOLDS.items()}), model)
    # 127 / T printed with %f and a trailing space, keyed by the layer that reads the tensor
    assert text == "conv1 42.717117 \nconv_a 50.800000 \nyb 50.800000 \nfc 21.166667 \n"


def test_weight_lines_first_from_formats_md(model: LoadedModel) -> None:
    # FORMATS.md: conv1_param_0 156.639840 148.301361 201.772598 (127 / absmax per output channel)
    values = [156.639840, 148.301361, 201.772598]
    weights = {"w1": {"axis": 0, "node": "conv1", "scales": [1 / v for v in values]}}
    text = dumps_ncnn(table({"x": sym(127 / 42.717117)}, weights), model)
    assert text.splitlines() == ["conv1_param_0 156.639840 148.301361 201.772598 ", "conv1 42.717117 "]
    weights_absmax = {"w1": {"axis": 0, "node": "conv1", "scales": [0.0, 0.0, 0.0], "absmax": [127 / v for v in values]}}
    assert dumps_ncnn(table({}, weights_absmax), model) == "conv1_param_0 156.639840 148.301361 201.772598 \n"


def test_per_tensor_weight_scale_is_repeated_per_channel(model: LoadedModel) -> None:
    weights = {
        "wa": {"axis": None, "per_channel": False, "node": "conv_a", "op_type": "Conv", "shape": [2, 3, 1, 1], "scales": [0.5]}
    }
    assert dumps_ncnn(table({}, weights), model) == "conv_a_param_0 2.000000 2.000000 \n"


def test_no_weights_gives_activation_lines_only(model: LoadedModel) -> None:
    text = dumps_ncnn(table({"x": sym(1.0)}), model)
    assert "_param_" not in text and text == "conv1 127.000000 \n"


def test_float_kept_lines_start_with_hash_and_read_back_as_float(model: LoadedModel) -> None:
    weights = {"wa": {"axis": 0, "node": "conv_a", "scales": [0.01, 0.02]}}
    src = table({"x": sym(1.0), "r1": sym(2.5, float_kept=True)}, weights)
    text = dumps_ncnn(src, model)
    assert text.splitlines() == [
        "#conv_a_param_0 100.000000 50.000000 ",
        "conv1 127.000000 ",
        "#conv_a 50.800000 ",
        "#yb 50.800000 ",
    ]
    back = loads_ncnn("# made by ncnn2table\n" + text, model)
    assert back.tensors["r1"].float_kept and not back.tensors["x"].float_kept
    assert math.isclose(back.tensors["r1"].threshold, 2.5, rel_tol=1e-6)


def test_round_trip_with_model(model: LoadedModel, tmp_path: Path) -> None:
    weights: dict[str, dict[str, Any]] = {
        "w1": {"axis": 0, "node": "conv1", "scales": [0.011, 0.0123, 0.0005]},
        "wf": {"axis": 0, "node": "fc", "scales": [0.2, 0.3]},
    }
    src = table({n: sym(t) for n, t in THRESHOLDS.items()}, weights)
    path = tmp_path / "m.table"
    write_ncnn_table(src, path, model)
    back = read_ncnn_table(path, model)
    assert set(back.tensors) == {"x", "r1", "f"}
    for n in back.tensors:
        v = 127 / THRESHOLDS[n]
        # %f keeps 6 decimals: |v' - v| <= 5e-7, so T' = 127 / v' is within that relative error of T
        assert math.isclose(back.tensors[n].threshold, THRESHOLDS[n], rel_tol=5e-7 / v + 1e-12)
        assert back.tensors[n].method == "ncnn"
    assert set(back.weights) == {"w1", "wf"}
    for w, d in weights.items():
        assert back.weights[w]["node"] == d["node"]
        for got, want in zip(back.weights[w]["scales"], d["scales"], strict=True):
            assert math.isclose(1 / got, 1 / want, abs_tol=5e-7)
    assert dumps_ncnn(back, model) == path.read_text()


def test_round_trip_without_model_keeps_layer_names() -> None:
    text = "conv1_param_0 156.639840 148.301361 \nconv1 42.717117 \n#conv2 17.370543 \n"
    back = loads_ncnn(text)
    assert set(back.tensors) == {"conv1", "conv2"} and back.tensors["conv2"].float_kept
    assert back.settings["ncnn_keys"] == "layer"
    assert dumps_ncnn(back) == text


def test_writing_a_tensor_table_needs_the_model() -> None:
    with pytest.raises(QuantvizError, match="--model"):
        dumps_ncnn(table({"x": sym(1.0)}))


def test_disagreeing_layers_keep_the_first_with_a_note(model: LoadedModel) -> None:
    back = loads_ncnn("conv_a 50.800000 \nyb 25.400000 \n", model)
    assert math.isclose(back.tensors["r1"].threshold, 2.5, rel_tol=1e-9)
    assert "disagree" in back.tensors["r1"].note


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("conv1 42.7 \nconv2 abc \n", "Line 2.*'abc'"),
        ("conv1\n", "Line 1.*no scale values"),
        ("conv1 0.000000 \n", "Line 1.*positive"),
        ("conv1 1 \nconv1 2 \n", "Line 2 .*repeats"),
        ("conv1 1 2 \n", "Line 1 .*2 values"),
    ],
)
def test_malformed_table_names_the_line(text: str, match: str) -> None:
    with pytest.raises(QuantvizError, match=match):
        loads_ncnn(text)


def test_unknown_layer_with_model_names_the_line(model: LoadedModel) -> None:
    with pytest.raises(QuantvizError, match="Line 2 .*'relu1'"):
        loads_ncnn("conv1 1.0 \nrelu1 2.0 \n", model)
