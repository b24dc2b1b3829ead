"""Weight scales against numpy: per output channel on the right axis, per tensor, zero channels,
and measured after BatchNorm folding."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.fold import fold_batchnorm
from quantviz.weights import scales_from_absmax, weight_scales

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def one_op(op: str, w: np.ndarray, x_shape: list[int], **attrs: Any) -> onnx.ModelProto:  # ONNX attributes of any kind
    """x -> op(x, W) -> y."""
    g = helper.make_graph(
        [helper.make_node(op, ["x", "W"], ["y"], name="layer", **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def expected(w: np.ndarray, axis: int) -> np.ndarray:
    """Slow loop: abs-max of each slice along axis, / 127 in float32."""
    out = []
    for c in range(w.shape[axis]):
        out.append(np.float32(max(abs(float(v)) for v in np.take(w, c, axis=axis).ravel())) / np.float32(127))
    return np.array(out, dtype=np.float32)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("op", "shape", "attrs", "axis"),
    [
        ("Conv", (5, 3, 3, 3), {}, 0),
        ("Conv", (6, 1, 3, 3), {"group": 3}, 0),  # grouped: W[M, C/g, kh, kw]
        ("Gemm", (4, 7), {"transB": 1}, 0),
        ("Gemm", (7, 4), {"transB": 0}, 1),
        ("MatMul", (7, 4), {}, 1),
        ("MatMul", (2, 7, 4), {}, 2),
    ],
)
def test_per_channel_axis_and_values(op: str, shape: tuple[int, ...], attrs: dict[str, int], axis: int) -> None:
    w = (RNG.standard_normal(shape) * RNG.uniform(0.1, 3.0, shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])).astype(np.float32)
    x_shape = {"Conv": [1, 3, 5, 5], "Gemm": [2, 7], "MatMul": [2, 7]}[op]
    wq = weight_scales(one_op(op, w, x_shape, **attrs))["W"]
    assert wq.axis == axis and wq.per_channel and wq.node == "layer" and wq.op_type == op
    np.testing.assert_array_equal(wq.scales, expected(w, axis))
    assert wq.scales.dtype == np.float32 and not wq.zero_points.any()
    # Quantized weights land within half a step of the float ones.
    q = wq.quantize(w)
    assert np.abs(q).max() == 127
    err = np.abs(q * wq.broadcast_scales().astype(np.float64) - w)
    assert np.all(err <= wq.broadcast_scales() / 2 + 1e-9)


def test_per_tensor_option() -> None:
    w = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    wq = weight_scales(one_op("Conv", w, [1, 2, 5, 5]), per_channel=False)["W"]
    assert wq.axis is None and not wq.per_channel
    assert wq.scales.tolist() == [np.float32(np.abs(w).max()) / np.float32(127)]


def test_zero_channel_gets_a_defined_scale() -> None:
    w = RNG.standard_normal((3, 2, 1, 1)).astype(np.float32)
    w[1] = 0.0
    wq = weight_scales(one_op("Conv", w, [1, 2, 3, 3]))["W"]
    assert np.all(np.isfinite(wq.scales)) and np.all(wq.scales > 0)
    assert wq.absmax[1] == 0
    assert wq.scales[1] == min(wq.scales[0], wq.scales[2])  # the documented choice
    assert not wq.quantize(w)[1].any()
    # All zero: the tensor-wide default, never 0 or NaN.
    z = weight_scales(one_op("Conv", np.zeros((2, 1, 1, 1), np.float32), [1, 1, 3, 3]))["W"]
    assert z.scales.tolist() == [1.0, 1.0]


def test_activation_matmul_and_constant_first_input_are_ignored() -> None:
    # MatMul(W, x) has its constant first: not a weight we know how to scale per output channel.
    g = helper.make_graph(
        [helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((3, 4), np.float32), "W")],
    )
    assert weight_scales(helper.make_model(g, ir_version=10)) == {}


@pytest.mark.slow
def test_digits_cnn_scales_measured_after_folding() -> None:
    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    folded, report = fold_batchnorm(proto)
    scales = weight_scales(folded)
    o = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    assert set(scales) == {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "Gemm")}
    for p in report.folded:
        bn, conv = nodes[p.batchnorm], nodes[p.conv]
        eps = next(a.f for a in bn.attribute if a.name == "epsilon")
        gamma, _, _, var = (o[i] for i in bn.input[1:5])
        w_folded = o[conv.input[1]] * (gamma / np.sqrt(var + eps))[:, None, None, None]
        mine = np.abs(w_folded).reshape(w_folded.shape[0], -1).max(axis=1) / 127
        np.testing.assert_allclose(scales[p.weight].scales, mine, rtol=1e-6)
        # Not the unfolded weights' scales (folding changes them, gamma / sqrt(var) != 1).
        unfolded = np.abs(o[conv.input[1]]).reshape(w_folded.shape[0], -1).max(axis=1) / 127
        assert not np.allclose(scales[p.weight].scales, unfolded, rtol=1e-3)
    fc = scales["fc.weight"]
    assert fc.axis == 0 and len(fc.scales) == 10  # Gemm with transB = 1


def test_to_dict_is_json_exact() -> None:
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    d = weight_scales(one_op("Gemm", w, [1, 4], transB=1))["W"].to_dict()
    back = json.loads(json.dumps(d))
    assert back == d
    assert back["axis"] == 0 and back["per_channel"] is True and back["node"] == "layer"
    assert all(math.isclose(s, float(np.float32(a) / np.float32(127)), rel_tol=0) for s, a in zip(back["scales"], back["absmax"], strict=True))


def test_a_channel_of_subnormal_weights_gets_its_neighbours_scale() -> None:
    """A real export (PP-OCRv4 rec) has a channel with |w| ~ 3e-39: absmax / 127 is subnormal, which no
    engine or reader accepts; such a channel is treated as all-zero (its values round to 0 anyway)."""
    absmax = np.array([0.5, 3.1e-39, 0.25, 0.0], dtype=np.float64)
    got = scales_from_absmax(absmax)
    fill = np.float32(0.25) / np.float32(127)
    np.testing.assert_array_equal(got, np.array([np.float32(0.5) / np.float32(127), fill, fill, fill], dtype=np.float32))
    assert (got >= np.finfo(np.float32).tiny).all()
