"""A generated detector-like model of 250+ layers (Conv, Gemm, MatMul) and about 770 float tensors,
with 25 op types, and its calibration set: what the browser tests and bench/bench_app.py walk where
a real model of that size would be too heavy to ship. Small channels and 8x8 maps keep a collection
to a few seconds; weights are random (seeded), scaled so that ranges stay finite along the chain.

    python -m tests.big_model OUT_DIR     # writes big_model.onnx and big_calib.npz

One cycle of five blocks (11 Conv layers, 30 tensors):
  A  Conv3x3 -> BatchNormalization -> SiLU (Sigmoid, Mul) -> Conv1x1 -> Add(x)
  B  Conv -> Relu -> Conv -> Clip(0, 6) -> Concat(x) -> Conv1x1 (2C -> C)
  C  Conv -> LeakyRelu -> MaxPool3x3/s1 -> Conv -> HardSigmoid -> Mul(x)
  D  Split(C/2, C/2) -> Conv, Conv -> Concat -> Conv -> Tanh
  E  AveragePool2x2 -> Conv -> Resize(x2, nearest) -> Add(x) -> Div(2)
Head: GlobalAveragePool -> Flatten -> Gemm -> Reshape -> Transpose -> MatMul -> Sub -> Softmax.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 8
SIDE = 8
CYCLES = 25  # 275 Conv layers + Gemm + MatMul; 757 float tensors
SAMPLES = 32


def build(cycles: int = CYCLES, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    c = CHANNELS

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], name: str, n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs

    def conv(x: str, name: str, cin: int, cout: int, k: int = 3, gain: float = 1.0) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * gain / np.sqrt(cin * k * k)).astype(np.float32)
        # channels of different sizes, as real layers have
        w *= rng.uniform(0.3, 2.0, size=(cout, 1, 1, 1)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        return node("Conv", [x, const(f"{name}.weight", w), const(f"{name}.bias", b)], name, pads=[k // 2] * 4)[0]

    x = "images"
    x = conv(x, "/stem/Conv", 3, c)
    for i in range(cycles):
        p = f"/model.{i}"
        # A
        y = conv(x, f"{p}/a/cv1/Conv", c, c)
        y = node("BatchNormalization", [y, const(f"{p}.a.g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
                 const(f"{p}.a.b", (rng.standard_normal(c) * 0.1).astype(np.float32)), const(f"{p}.a.m", np.zeros(c, np.float32)),
                 const(f"{p}.a.v", np.ones(c, np.float32))], f"{p}/a/bn/BatchNormalization")[0]  # fmt: skip
        s = node("Sigmoid", [y], f"{p}/a/act/Sigmoid")[0]
        y = node("Mul", [y, s], f"{p}/a/act/Mul")[0]
        y = conv(y, f"{p}/a/cv2/Conv", c, c, k=1, gain=0.5)
        x = node("Add", [x, y], f"{p}/a/Add")[0]
        # B
        y = conv(x, f"{p}/b/cv1/Conv", c, c)
        y = node("Relu", [y], f"{p}/b/Relu")[0]
        y = conv(y, f"{p}/b/cv2/Conv", c, c)
        y = node("Clip", [y, const(f"{p}.b.lo", np.array(0, np.float32)), const(f"{p}.b.hi", np.array(6, np.float32))], f"{p}/b/Clip")[0]
        y = node("Concat", [x, y], f"{p}/b/Concat", axis=1)[0]
        x = conv(y, f"{p}/b/cv3/Conv", 2 * c, c, k=1)
        # C
        y = conv(x, f"{p}/c/cv1/Conv", c, c)
        y = node("LeakyRelu", [y], f"{p}/c/LeakyRelu", alpha=0.1)[0]
        y = node("MaxPool", [y], f"{p}/c/MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])[0]
        y = conv(y, f"{p}/c/cv2/Conv", c, c)
        y = node("HardSigmoid", [y], f"{p}/c/HardSigmoid")[0]
        x = node("Mul", [x, y], f"{p}/c/Mul")[0]
        # D
        a, b = node("Split", [x, const(f"{p}.d.split", np.array([c // 2, c // 2], np.int64))], f"{p}/d/Split", n_out=2, axis=1)
        a = conv(a, f"{p}/d/cv1/Conv", c // 2, c // 2)
        b = conv(b, f"{p}/d/cv2/Conv", c // 2, c // 2)
        y = node("Concat", [a, b], f"{p}/d/Concat", axis=1)[0]
        y = conv(y, f"{p}/d/cv3/Conv", c, c, k=1)
        x = node("Tanh", [y], f"{p}/d/Tanh")[0]
        # E
        y = node("AveragePool", [x], f"{p}/e/AveragePool", kernel_shape=[2, 2], strides=[2, 2])[0]
        y = conv(y, f"{p}/e/cv/Conv", c, c)
        y = node("Resize", [y, "", const(f"{p}.e.scales", np.array([1, 1, 2, 2], np.float32))], f"{p}/e/Resize", mode="nearest")[0]
        y = node("Add", [x, y], f"{p}/e/Add")[0]
        x = node("Div", [y, const(f"{p}.e.two", np.array(2, np.float32))], f"{p}/e/Div")[0]
    y = node("GlobalAveragePool", [x], "/head/GlobalAveragePool")[0]
    y = node("Flatten", [y], "/head/Flatten")[0]
    w = (rng.standard_normal((c, 4 * c)) / np.sqrt(c)).astype(np.float32)
    y = node("Gemm", [y, const("head.fc.weight", w), const("head.fc.bias", np.zeros(4 * c, np.float32))], "/head/Gemm")[0]
    y = node("Reshape", [y, const("head.shape", np.array([-1, 4, c], np.int64))], "/head/Reshape")[0]
    y = node("Transpose", [y], "/head/Transpose", perm=[0, 2, 1])[0]
    m = (rng.standard_normal((4, 10)) / 2).astype(np.float32)
    y = node("MatMul", [y, const("head.proj.weight", m)], "/head/MatMul")[0]
    y = node("Sub", [y, const("head.offset", np.array(0.5, np.float32))], "/head/Sub")[0]
    nodes.append(helper.make_node("Softmax", [y], ["scores"], name="/head/Softmax", axis=-1))
    graph = helper.make_graph(
        nodes, "big_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", c, 10])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def write(folder: Path, cycles: int = CYCLES) -> tuple[Path, Path]:
    """big_model.onnx and big_calib.npz ('images': SAMPLES samples) in folder; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path, data_path = folder / "big_model.onnx", folder / "big_calib.npz"
    onnx.save(build(cycles), str(model_path))
    rng = np.random.default_rng(1)
    np.savez(data_path, images=rng.uniform(0, 1, (SAMPLES, 3, SIDE, SIDE)).astype(np.float32))
    return model_path, data_path


if __name__ == "__main__":
    print(*write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
