"""Tiny ONNX graphs built with onnx.helper for tests (each with a one-line drawing)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnxruntime 1.31 refuses onnx 1.23's default IR 14
OPSET = 17


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(m)
    return m


def conv_bn_relu(seed: int = 0, batch: str | int = "N") -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(w,b) -> BatchNormalization -> Relu -> y; plus Add(y, y) -> Concat(y, z) -> out."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    gamma = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    beta = rng.standard_normal(4).astype(np.float32) * 0.1
    mean = rng.standard_normal(4).astype(np.float32) * 0.1
    var = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w, "w"), (b, "b"), (gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var")]]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv_out", "gamma", "beta", "mean", "var"], ["bn_out"], name="bn"),
        helper.make_node("Relu", ["bn_out"], ["relu_out"], name="relu"),
        helper.make_node("Add", ["relu_out", "bn_out"], ["add_out"], name="add"),
        helper.make_node("Concat", ["relu_out", "add_out"], ["out"], name="concat", axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "conv_bn_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 8, 8, 8])],
        inits,
    )
    return _model(g)


def two_inputs() -> onnx.ModelProto:
    """a[N,4], b[N,4] -> Add -> Mul(., a) -> y."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="add"), helper.make_node("Mul", ["s", "a"], ["y"], name="mul")]
    g = helper.make_graph(
        nodes,
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    return _model(g)


def identity_graph(shape: list[int | str] | None = None) -> onnx.ModelProto:
    """x -> Identity -> y (data passes through unchanged: statistics of y equal those of x)."""
    shape = shape or ["N", 16]
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return _model(g)


def deep_residual(blocks: int = 105, channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    """x[N,C,8,8] -> blocks x (Conv 3x3 -> Relu -> Add(., block input)) -> y: 3 tensors a block, so 105
    blocks give 316 tensors to calibrate (a real detector's count) at a few KB of activations a sample."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for k in range(blocks):
        w = (rng.standard_normal((channels, channels, 3, 3)) * 0.15).astype(np.float32)
        b = (rng.standard_normal(channels) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        nodes += [
            helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"conv{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{k}"], [f"relu{k}"], name=f"relu{k}"),
            helper.make_node("Add", [f"relu{k}", prev], [f"add{k}"], name=f"add{k}"),
        ]
        prev = f"add{k}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    g = helper.make_graph(
        nodes,
        "deep_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 8, 8])],
        inits,
    )
    return _model(g)
