"""BatchNorm folding: the folded model computes what the original computes (plain onnxruntime), and
the folded weights equal w * gamma / sqrt(var + eps) computed here in numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.fold import fold_batchnorm
from tests import graphs

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def run(proto: onnx.ModelProto, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Plain onnxruntime, optionally with intermediate tensors as extra graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for name in outputs or []:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def inits(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def model(nodes: list[onnx.NodeProto], arrays: dict[str, np.ndarray], x_shape: list[int | str], y_name: str = "y") -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def bn_arrays(rng: np.random.Generator, c: int, prefix: str = "") -> dict[str, np.ndarray]:
    return {
        prefix + "gamma": rng.uniform(0.5, 2.0, c),
        prefix + "beta": rng.standard_normal(c),
        prefix + "mean": rng.standard_normal(c),
        prefix + "var": rng.uniform(0.1, 3.0, c),
    }


def test_conv_bn_relu_folds_and_matches_onnxruntime() -> None:
    # x -> Conv(w, b) -> BN -> Relu -> Add(relu, bn) -> Concat -> out
    proto = graphs.conv_bn_relu(seed=3)
    before = proto.SerializeToString()
    folded, report = fold_batchnorm(proto)
    assert proto.SerializeToString() == before  # pure
    onnx.checker.check_model(folded)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Add", "Concat"]
    assert folded.graph.node[0].output[0] == "bn_out"
    assert [(p.conv, p.batchnorm, p.removed_tensor, p.output) for p in report.folded] == [("conv", "bn", "conv_out", "bn_out")]
    assert report.renamed == {"conv_out": "bn_out"}
    # BN parameters are gone with the BN.
    assert set(inits(folded)) == {"w", "b"}

    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    a = run(proto, {"x": x}, ["bn_out", "relu_out"])
    b = run(folded, {"x": x}, ["bn_out", "relu_out"])
    for name in ("out", "bn_out", "relu_out"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5)

    # Folded weights against numpy (eps is BN's default 1e-5).
    o = inits(proto)
    s = o["gamma"].astype(np.float64) / np.sqrt(o["var"].astype(np.float64) + 1e-5)
    f = inits(folded)
    np.testing.assert_allclose(f["w"], o["w"] * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(f["b"], (o["b"] - o["mean"]) * s + o["beta"], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_digits_cnn_folds_every_batchnorm_and_keeps_outputs() -> None:
    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    folded, report = fold_batchnorm(proto)
    onnx.checker.check_model(folded)
    n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert n_bn == 6 and len(report.folded) == n_bn and not report.kept
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    x = np.load(SAMPLES / "digits_calib.npz")["input"][:128]
    bn_outs = [n.output[0] for n in proto.graph.node if n.op_type == "BatchNormalization"]
    a = run(proto, {"input": x}, bn_outs)
    b = run(folded, {"input": x}, bn_outs)
    for name in ["probs", *bn_outs]:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5)
    # Each folded weight against numpy; the Convs had no bias, so b' = beta - mean * s.
    o, f = inits(proto), inits(folded)
    nodes = {n.name: n for n in proto.graph.node}
    for p in report.folded:
        bn = nodes[p.batchnorm]
        conv = nodes[p.conv]
        gamma, beta, mean, var = (o[i].astype(np.float64) for i in bn.input[1:5])
        eps = next(a.f for a in bn.attribute if a.name == "epsilon")
        s = gamma / np.sqrt(var + eps)
        np.testing.assert_allclose(f[p.weight], o[conv.input[1]] * s[:, None, None, None], rtol=1e-6)
        np.testing.assert_allclose(f[p.bias], beta - mean * s, rtol=1e-6, atol=1e-7)


def test_conv_output_with_two_consumers_is_not_folded() -> None:
    # x -> Conv -> c; c -> BN -> y ; c -> Relu -> r (graph output too)
    rng = np.random.default_rng(1)
    arrays = {"w": rng.standard_normal((2, 1, 3, 3)), **bn_arrays(rng, 2)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    proto = model(nodes, arrays, [1, 1, 5, 5])
    folded, report = fold_batchnorm(proto)
    assert not report.folded and "bn" in report.kept
    assert folded.SerializeToString() == proto.SerializeToString()


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_folds(trans_b: int) -> None:
    # x[N,6] -> Gemm(B, C, alpha=0.7, beta=1.3) -> BN -> y
    rng = np.random.default_rng(2 + trans_b)
    w = rng.standard_normal((4, 6) if trans_b else (6, 4))
    arrays = {"B": w, "C": rng.standard_normal(4), **bn_arrays(rng, 4)}
    nodes = [
        helper.make_node("Gemm", ["x", "B", "C"], ["g"], name="gemm", transB=trans_b, alpha=0.7, beta=1.3),
        helper.make_node("BatchNormalization", ["g", "gamma", "beta", "mean", "var"], ["y"], name="bn", epsilon=1e-3),
    ]
    proto = model(nodes, arrays, ["N", 6])
    folded, report = fold_batchnorm(proto)
    assert len(report.folded) == 1
    x = rng.standard_normal((7, 6)).astype(np.float32)
    np.testing.assert_allclose(run(folded, {"x": x})["y"], run(proto, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    # Independent: y = ((0.7 x B + 1.3 C) - mean) * gamma / sqrt(var + eps) + beta.
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    bm = a["B"].T if trans_b else a["B"]
    expected = (0.7 * x @ bm + 1.3 * a["C"] - a["mean"]) * a["gamma"] / np.sqrt(a["var"] + 1e-3) + a["beta"]
    np.testing.assert_allclose(run(folded, {"x": x})["y"], expected, rtol=1e-4, atol=1e-4)


def test_shared_weight_is_copied_not_overwritten() -> None:
    # x -> Conv(w) -> BN -> y1 ; x -> Conv(w) -> y2   (the same initializer w)
    rng = np.random.default_rng(4)
    arrays = {"w": rng.standard_normal((3, 2, 1, 1)), **bn_arrays(rng, 3)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
        helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2"),
    ]
    proto = model(nodes, arrays, [2, 2, 4, 4])
    proto.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    folded, report = fold_batchnorm(proto)
    (pair,) = report.folded
    assert pair.weight != "w"
    f = inits(folded)
    np.testing.assert_array_equal(f["w"], inits(proto)["w"])
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    a, b = run(proto, {"x": x}), run(folded, {"x": x})
    for name in ("y", "y2"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5)


def test_training_mode_batchnorm_is_kept() -> None:
    rng = np.random.default_rng(5)
    arrays = {"w": rng.standard_normal((2, 1, 1, 1)), **bn_arrays(rng, 2)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn", training_mode=1),
    ]
    folded, report = fold_batchnorm(model(nodes, arrays, [1, 1, 2, 2]))
    assert not report.folded and "training" in report.kept["bn"]
