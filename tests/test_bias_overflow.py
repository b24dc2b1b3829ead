"""int32 bias overflow (issue 8 item 5): detected where the table is built, the weight scale raised so
b / (s_x * s_w) fits int32, reported in settings["bias_overflow"], on the command line, and the QDQ
model keeps the bias."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.cli import main
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.model import load_model
from quantviz.qdq import build_qdq_model
from quantviz.table import calibrate_model
from tests.corpus import _save

INT32_MAX = 2**31 - 1


def _model(folder: Path) -> tuple[Path, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """x[N,4] (values ~1e-6) -> Gemm(w, b = 1000s) -> h -> Relu -> y: b / (s_x * s_w) is ~1e13."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((3, 4)) * 0.5).astype(np.float32)
    b = np.array([1000.0, -2000.0, 0.01], np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "bias_overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    x = (rng.standard_normal((32, 4)) * 1e-6).astype(np.float32)
    return _save(g, folder, "bias_overflow"), {"x": x}, w, b


def test_weight_scale_raised_so_bias_fits(tmp_path: Path) -> None:
    path, data, w, b = _model(tmp_path)
    model = load_model(path)
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(tmp_path / "d.npz", **data)  # type: ignore[arg-type]
    stats = collect(model, open_source(str(tmp_path / "d.npz"), model.inputs), CollectConfig())
    table = calibrate_model(model, stats, "minmax")
    s_x = table.tensors["x"].scale
    absmax = np.abs(w).max(axis=1) / 127
    assert np.any(np.abs(b) / (s_x * absmax) > INT32_MAX)  # the case overflows with abs-max scales
    ov = table.settings["bias_overflow"]["w"]
    assert ov["layer"] == "fc" and ov["bias"] == "b"
    expect = [c for c in range(3) if abs(b[c]) / (s_x * absmax[c]) > INT32_MAX]
    assert ov["channels"] == expect
    s_w = np.asarray(table.weights["w"]["scales"], dtype=np.float64)
    assert np.all(np.abs(b) / (s_x * s_w) <= INT32_MAX)
    np.testing.assert_allclose(s_w[[c for c in range(3) if c not in expect]], absmax[[c for c in range(3) if c not in expect]], rtol=1e-6)
    assert "overflows" in ov["text"] and "'fc'" in ov["text"]
    # the QDQ model stores an int32 bias within range and reproduces the bias-dominated float output
    qdq = build_qdq_model(model, table)
    ints = [numpy_helper.to_array(i) for i in qdq.graph.initializer if i.data_type == TensorProto.INT32]
    assert ints and all(np.abs(a.astype(np.int64)).max() <= INT32_MAX for a in ints)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    y_q = ort.InferenceSession(qdq.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, data)[0]
    y_f = np.maximum(data["x"] @ w.T + b, 0)
    np.testing.assert_allclose(y_q[:, 0], y_f[:, 0], rtol=1e-2)


def test_cli_names_the_overflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, data, _, _ = _model(tmp_path)
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(tmp_path / "d.npz", **data)  # type: ignore[arg-type]
    assert main(["calibrate", str(path), "--data", str(tmp_path / "d.npz"), "--method", "minmax", "-o", str(tmp_path / "t.json")]) == 0
    assert "warning: The int32 bias 'b' of layer 'fc' overflows" in capsys.readouterr().err
