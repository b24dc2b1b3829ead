"""Reading a table back from a QDQ model that onnxruntime's own quantize_static wrote."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quantviz.errors import QuantvizError
from quantviz.export.qdq_model import build_available, loads_qdq, qdq_model_bytes
from quantviz.model import load_model
from quantviz.table import CalibrationTable

from .graphs import conv_bn_relu, identity_graph

OVERRIDES = {"x": 0.03, "relu_out": 0.02}


@pytest.fixture(scope="module")
def qdq_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """conv_bn_relu quantized by onnxruntime (QDQ, int8, per-channel weights) with two fixed activation scales."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # onnxruntime takes any object with get_next() as a CalibrationDataReader (its __subclasshook__);
    # its classes carry no type information, so subclassing one would derive from Any.
    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    d = tmp_path_factory.mktemp("qdq")
    onnx.save(conv_bn_relu(), str(d / "f.onnx"))
    # onnxruntime 1.31 wants 0-d arrays here (numpy scalars fail in QuantizationParams)
    overrides = {
        n: [{"scale": np.array(s, dtype=np.float32), "zero_point": np.array(0, dtype=np.int8)}] for n, s in OVERRIDES.items()
    }
    quantize_static(
        str(d / "f.onnx"),
        str(d / "q.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"TensorQuantOverrides": overrides},
    )
    return (d / "q.onnx").read_bytes()


def _initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == name)


def test_activation_scales_come_back(qdq_bytes: bytes) -> None:
    table = loads_qdq(qdq_bytes, "q.onnx")
    for name, s in OVERRIDES.items():
        e = table.tensors[name]
        assert e.scale == float(np.float32(s))
        assert (e.zero_point, e.threshold, e.min) == (0, float(np.float32(s)) * 127, -float(np.float32(s)) * 127)
    # every QuantizeLinear of an activation gives one entry; the renamed graph output is "out" again
    proto = onnx.load_from_string(qdq_bytes)
    assert "out" in table.tensors and "out_QuantizeLinear_Input" not in table.tensors
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in table.tensors:
            assert table.tensors[n.input[0]].scale == float(_initializer(proto, n.input[1]))
            assert table.tensors[n.input[0]].zero_point == int(_initializer(proto, n.input[2]))


def test_weight_scales_per_channel(qdq_bytes: bytes) -> None:
    table = loads_qdq(qdq_bytes)
    proto = onnx.load_from_string(qdq_bytes)
    w = table.weights["w"]
    assert w["node"] == "conv" and w["axis"] == 0 and w["per_channel"]
    assert w["scales"] == [float(v) for v in _initializer(proto, "w_scale")]
    assert "b" not in table.weights  # int32 bias scales are derived (s_x * s_w), not calibrated


def test_a_float_model_is_not_a_qdq_table() -> None:
    with pytest.raises(QuantvizError, match="not a QDQ model"):
        loads_qdq(identity_graph().SerializeToString())
    with pytest.raises(QuantvizError, match="not an ONNX model"):
        loads_qdq(b"\x08\x07garbage that is not protobuf \xff\xff")


def test_export_needs_model_and_builder() -> None:
    table = CalibrationTable("m", "", {}, {})
    with pytest.raises(QuantvizError, match="--model"):
        qdq_model_bytes(table, None)
    if not build_available():
        with pytest.raises(QuantvizError, match="not available yet"):
            qdq_model_bytes(table, load_model(identity_graph().SerializeToString()))
