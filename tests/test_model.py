"""quantviz.model: tensors listed with producer, op type and shape; bad models named; nothing written to disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.errors import QuantvizError
from quantviz.model import Dim, load_model, plain_session, session_with_outputs
from tests import graphs
from tests.conftest import ort_run_with_outputs


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    inits: Sequence[onnx.TensorProto] = (),
    opsets: Sequence[tuple[str, int]] = (("", graphs.OPSET),),
    ir_version: int = graphs.IR_VERSION,
) -> bytes:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=ir_version)
    return bytes(m.SerializeToString())


def _vi(name: str, elem: int = TensorProto.FLOAT, shape: Sequence[Dim] = ("N", 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_conv_bn_relu_tensors() -> None:
    m = load_model(graphs.conv_bn_relu().SerializeToString(), name="cbr.onnx")
    got = {t.name: (t.kind, t.producer, t.op_type, t.shape, t.dtype) for t in m.tensors}
    assert got == {
        "x": ("input", "", "Input", ("N", 3, 8, 8), "float32"),
        "conv_out": ("activation", "conv", "Conv", ("N", 4, 8, 8), "float32"),
        "bn_out": ("activation", "bn", "BatchNormalization", ("N", 4, 8, 8), "float32"),
        "relu_out": ("activation", "relu", "Relu", ("N", 4, 8, 8), "float32"),
        "add_out": ("activation", "add", "Add", ("N", 4, 8, 8), "float32"),
        "out": ("output", "concat", "Concat", ("N", 8, 8, 8), "float32"),
    }
    assert m.tensor("relu_out").consumers == ("add", "concat")
    assert m.tensor("bn_out").consumers == ("relu", "add")
    assert [i.name for i in m.inputs] == ["x"] and m.inputs[0].shape == ("N", 3, 8, 8)
    assert m.outputs == ("out",) and m.name == "cbr.onnx"
    assert {"w", "b", "gamma", "beta", "mean", "var"} <= m.initializers
    assert "w" not in m.tensor_names  # weights are not activations
    np.testing.assert_array_equal(m.weight("w"), numpy_helper.to_array(graphs.conv_bn_relu().graph.initializer[0]))
    with pytest.raises(QuantvizError, match="no calibratable tensor named 'nope'"):
        m.tensor("nope")


def test_two_inputs_listed() -> None:
    m = load_model(graphs.two_inputs().SerializeToString())
    assert [(i.name, i.shape, i.dtype) for i in m.inputs] == [("a", ("N", 4), "float32"), ("b", ("N", 4), "float32")]
    assert [(t.name, t.kind, t.op_type) for t in m.tensors] == [
        ("a", "input", "Input"),
        ("b", "input", "Input"),
        ("s", "activation", "Add"),
        ("y", "output", "Mul"),
    ]


def test_constant_node_outputs_are_weights() -> None:
    """x -> MatMul(x, W) with W a Constant node (Paddle2ONNX style), plus Mul(Constant, Constant) folded."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "wc")
    nodes = [
        helper.make_node("Constant", [], ["W"], name="const_w", value=w),
        helper.make_node("Constant", [], ["k"], name="const_k", value=numpy_helper.from_array(np.array([2.0], np.float32), "k")),
        helper.make_node("Mul", ["W", "k"], ["W2"], name="scale_w"),  # computed from constants only
        helper.make_node("MatMul", ["x", "W2"], ["y"], name="mm"),
    ]
    m = load_model(_model(nodes, [_vi("x")], [_vi("y")]))
    assert m.tensor_names == ["x", "y"]
    np.testing.assert_array_equal(m.weight("W"), np.arange(16, dtype=np.float32).reshape(4, 4))


@pytest.mark.parametrize("n", [1, 5])
def test_dynamic_batch(n: int) -> None:
    proto = graphs.conv_bn_relu()
    m = load_model(proto.SerializeToString())
    x = np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)
    sess = session_with_outputs(m, ["relu_out", "out"])
    relu, out = sess.run(["relu_out", "out"], {"x": x})
    expected = ort_run_with_outputs(proto, ["relu_out", "out"], {"x": x})
    assert relu.shape == (n, 4, 8, 8) and out.shape == (n, 8, 8, 8)
    np.testing.assert_allclose(relu, expected["relu_out"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, expected["out"], rtol=1e-5, atol=1e-6)
    (plain,) = plain_session(m).run(None, {"x": x})
    np.testing.assert_allclose(plain, expected["out"], rtol=1e-5, atol=1e-6)


def test_session_with_outputs_unknown_name() -> None:
    m = load_model(graphs.identity_graph().SerializeToString())
    with pytest.raises(QuantvizError, match="no float tensor named 'zzz'"):
        session_with_outputs(m, ["zzz"])


# ------------------------------------------------------------------ bad models


def test_not_onnx_random_bytes() -> None:
    for seed in range(3):
        with pytest.raises(QuantvizError, match="not a readable ONNX model"):
            load_model(np.random.default_rng(seed).bytes(400))


def test_not_onnx_text_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.onnx"
    p.write_text("name,value\nthis is a csv file, not a model\n")
    with pytest.raises(QuantvizError, match="'notes.onnx' is not a readable ONNX model"):
        load_model(p)


def test_empty_file() -> None:
    with pytest.raises(QuantvizError, match="holds no graph"):
        load_model(b"")


def test_truncated_model(tmp_path: Path) -> None:
    raw = graphs.conv_bn_relu().SerializeToString()
    with pytest.raises(QuantvizError, match="truncated"):
        load_model(raw[: len(raw) // 2])
    p = tmp_path / "half.onnx"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(QuantvizError, match="'half.onnx' is not a readable ONNX model.*truncated"):
        load_model(p)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(QuantvizError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(QuantvizError, match="is a folder"):
        load_model(tmp_path)


def test_custom_op_cannot_run() -> None:
    raw = _model(
        [helper.make_node("FancyGelu", ["x"], ["y"], name="fancy", domain="com.example")],
        [_vi("x")],
        [_vi("y")],
        opsets=(("", graphs.OPSET), ("com.example", 1)),
    )
    with pytest.raises(
        QuantvizError,
        match=r"onnxruntime cannot run this model: it does not know the operator FancyGelu of domain 'com\.example'",
    ):
        load_model(raw)


def test_opset_too_new() -> None:
    raw = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")], opsets=(("", 99),))
    with pytest.raises(QuantvizError, match=r"opset 99.*supports.*opset") as info:
        load_model(raw)
    assert "onnxruntime_src" not in str(info.value)  # no C++ source locations in a user message


def test_ir_version_too_new() -> None:
    raw = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")], ir_version=14)
    with pytest.raises(QuantvizError, match=r"IR version 14") as info:
        load_model(raw)
    assert "onnxruntime_src" not in str(info.value)


def test_no_float_tensors() -> None:
    raw = _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [_vi("a", TensorProto.INT64), _vi("b", TensorProto.INT64)],
        [_vi("y", TensorProto.INT64)],
    )
    with pytest.raises(QuantvizError, match="no float tensor to calibrate"):
        load_model(raw)


# ------------------------------------------------------------------ files


def test_external_data(tmp_path: Path) -> None:
    proto = graphs.conv_bn_relu(seed=4)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0
    )
    stored = onnx.load(str(path), load_external_data=False)
    assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in stored.graph.initializer)
    m = load_model(path)
    assert m.name == "ext.onnx" and "relu_out" in m.tensor_names
    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    stats = collect(m, open_source(tmp_path / "d.npz", m.inputs), CollectConfig(bins=64, batch_size=4))
    # (onnx.save_model with external data rewrote `proto` in place: the oracle gets a fresh copy)
    expected = ort_run_with_outputs(graphs.conv_bn_relu(seed=4), ["relu_out"], {"x": x})["relu_out"]
    assert stats.tensors["relu_out"].max == pytest.approx(float(expected.max()), rel=1e-5)
    assert stats.samples == 6


def test_external_data_as_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(graphs.conv_bn_relu(), str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)  # even with the data file in the working directory, bytes are not enough
    with pytest.raises(QuantvizError, match="external data file.*load it from its path"):
        load_model(path.read_bytes())


def test_external_data_missing(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(graphs.conv_bn_relu(), str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(QuantvizError, match="external data file of 'ext.onnx' is missing.*ext.data"):
        load_model(path)


def test_nothing_written_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    m = load_model(graphs.conv_bn_relu().SerializeToString())
    sess = session_with_outputs(m)
    sess.run(None, {"x": np.zeros((2, 3, 8, 8), np.float32)})
    plain_session(m)
    assert os.listdir(work) == []


def test_sha256_and_name(write_model: Callable[[onnx.ModelProto, str], Path]) -> None:
    import hashlib

    path = write_model(graphs.identity_graph(), "ident.onnx")
    m = load_model(path)
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.name == "ident.onnx"
    assert load_model(path.read_bytes()).sha256 == m.sha256
