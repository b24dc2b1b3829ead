"""Domain warnings fire on constructed cases (a clipped Softmax, a non-negative tensor on symmetric int8,
per-tensor weights whose channels differ 40x, an int32 bias overflow, NaN in a tensor) and not on clean
ones; each fix does what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.calib import MethodConfig
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.domain_warnings import (
    BIAS_OVERFLOW,
    NONFINITE,
    NONNEGATIVE,
    SATURATING,
    WEIGHT_CHANNELS,
    Fix,
    apply_fix,
    domain_warnings,
    for_layer,
)
from quantviz.model import load_model
from quantviz.review import Review
from quantviz.table import TensorEntry, calibrate_model

from .graphs import IR_VERSION, OPSET
from .test_bias_overflow import _model as bias_overflow_model

F32 = np.float32


def _softmax_model(spread: float):
    """x[N,8] -> Gemm(w1: row 0 scaled by `spread`) -> g -> Softmax -> p -> Gemm(w2) -> y."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((6, 8)) * 0.5).astype(F32)
    w1[0] *= spread
    w2 = (rng.standard_normal((3, 6)) * 0.5).astype(F32)
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["g"], name="fc1", transB=1),
            helper.make_node("Softmax", ["g"], ["p"], name="softmax", axis=1),
            helper.make_node("Gemm", ["p", "w2"], ["y"], name="fc2", transB=1),
        ],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return load_model(proto.SerializeToString()), w1


def _stats(model, x: np.ndarray, folder: Path):
    np.savez(folder / "x.npz", x=x)
    return collect(model, open_source(folder / "x.npz", model.inputs), CollectConfig())


def _warn(model, stats, table, per_channel=True, profile="ort"):
    return domain_warnings(table, stats, model.folded.weights(True), per_channel=per_channel, profile=profile)


def test_a_clipped_softmax_warns_and_minmax_fixes_it(tmp_path: Path) -> None:
    model, _ = _softmax_model(1.0)
    stats = _stats(model, np.random.default_rng(1).standard_normal((64, 8)).astype(F32) * 3, tmp_path)
    table = calibrate_model(model, stats, "minmax")
    assert [w for w in _warn(model, stats, table) if w.kind == SATURATING] == []  # MinMax keeps the top
    top = stats.tensors["p"].max
    t = top / 2  # what a KL run can do to a peaked Softmax
    clipped = table.with_entry("p", TensorEntry("kl", -t, t, t, float(F32(t) / F32(127)), 0))
    (w,) = [w for w in _warn(model, stats, clipped) if w.kind == SATURATING]
    assert w.tensors == ("p",) and w.layers == ("softmax",) and f"{top:.4g}" in w.text
    assert w.fix == Fix("method", "Use MinMax for p", tensor="p", method="minmax")
    review = apply_fix(Review(default_method="kl"), w.fix)
    assert review.method_of("p") == "minmax" and review.method_of("g") == "kl"
    assert for_layer([w], "softmax", set()) == [w] and for_layer([w], "fc1", {"g"}) == []


def test_a_non_negative_tensor_on_symmetric_int8(tmp_path: Path) -> None:
    model, _ = _softmax_model(1.0)
    stats = _stats(model, np.random.default_rng(1).standard_normal((64, 8)).astype(F32), tmp_path)
    assert stats.tensors["p"].min >= 0 and stats.tensors["g"].min < 0
    table = calibrate_model(model, stats, "minmax")
    (w,) = [w for w in _warn(model, stats, table) if w.kind == NONNEGATIVE]
    assert w.tensors == ("p",) and "128 of the 255 levels" in w.text  # the Softmax output, not g nor y
    assert w.fix is not None and w.fix.kind == "asymmetric"
    assert apply_fix(Review(), w.fix).config.symmetric is False
    # TensorRT is symmetric only: no fix, the loss is said
    (trt,) = [w for w in _warn(model, stats, table, profile="trt") if w.kind == NONNEGATIVE]
    assert trt.fix is None and "symmetric int8 only" in trt.text
    # an asymmetric table is clean
    asym = calibrate_model(model, stats, "minmax", MethodConfig(symmetric=False))
    assert [w for w in _warn(model, stats, asym) if w.kind == NONNEGATIVE] == []


def test_per_tensor_weights_with_channels_40x_apart(tmp_path: Path) -> None:
    model, w1 = _softmax_model(40.0)
    stats = _stats(model, np.random.default_rng(1).standard_normal((16, 8)).astype(F32), tmp_path)
    table = calibrate_model(model, stats, "minmax", per_channel=False)
    got = [w for w in _warn(model, stats, table, per_channel=False) if w.kind == WEIGHT_CHANNELS]
    a = np.abs(w1).max(axis=1)
    assert a.max() / a.min() > 10  # the case, computed on the array itself
    assert [(w.tensors, w.layers) for w in got] == [(("w1",), ("fc1",))]  # w2's rows are alike
    assert f"{a.max() / a.min():.0f}x" in got[0].text and got[0].fix == Fix("per_channel", "Use per-channel weight scales")
    with pytest.raises(ValueError):
        apply_fix(Review(), got[0].fix)  # a session setting, not a review choice: the page sets it
    # per-channel weights, or channels of one size, are clean
    assert [w for w in _warn(model, stats, table, per_channel=True) if w.kind == WEIGHT_CHANNELS] == []
    even, w_even = _softmax_model(1.0)
    assert np.abs(w_even).max(axis=1).max() / np.abs(w_even).max(axis=1).min() < 10
    stats2 = _stats(even, np.random.default_rng(1).standard_normal((16, 8)).astype(F32), tmp_path)
    assert [w for w in _warn(even, stats2, calibrate_model(even, stats2, "minmax", per_channel=False), per_channel=False) if w.kind == WEIGHT_CHANNELS] == []


def test_an_int32_bias_overflow_is_shown_with_a_larger_input_scale_as_fix(tmp_path: Path) -> None:
    path, data, _, _ = bias_overflow_model(tmp_path)
    model = load_model(path)
    stats = _stats(model, data["x"], tmp_path)
    table = calibrate_model(model, stats, "minmax")
    (w,) = [w for w in _warn(model, stats, table) if w.kind == BIAS_OVERFLOW]
    assert w.layers == ("fc",) and "overflows" in w.text
    # MinMax already keeps the whole (tiny) input: the fix is the layer in float
    assert w.fix == Fix("float", "Keep fc in float", tensor="h")
    # a method that clips the input: MinMax on it is the fix
    t = table.tensors["x"].threshold / 4
    clipped = table.with_entry("x", TensorEntry("kl", -t, t, t, float(F32(t) / F32(127)), 0))
    from quantviz.table import apply_model

    clipped = apply_model(clipped, model, True)
    (w,) = [w for w in _warn(model, stats, clipped) if w.kind == BIAS_OVERFLOW]
    assert w.fix is not None and w.fix.tensor == "x" and w.fix.method == "minmax"
    # the same layer with an ordinary input: no overflow, no warning
    clean = _stats(model, data["x"] * 1e6, tmp_path)
    assert [w for w in _warn(model, clean, calibrate_model(model, clean, "minmax")) if w.kind == BIAS_OVERFLOW] == []


def test_nan_in_a_tensor(tmp_path: Path) -> None:
    g = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["s"], name="sqrt"), helper.make_node("Relu", ["s"], ["y"], name="relu")],
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = load_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION).SerializeToString())
    x = np.abs(np.random.default_rng(2).standard_normal((8, 4))).astype(F32)
    clean = _stats(model, x, tmp_path)
    assert [w for w in _warn(model, clean, calibrate_model(model, clean, "minmax")) if w.kind == NONFINITE] == []
    x[3, 1] = -1.0  # sqrt(-1): one NaN in s (Relu passes it on to y)
    stats = _stats(model, x, tmp_path)
    got = {w.tensors[0]: w for w in _warn(model, stats, calibrate_model(model, stats, "minmax")) if w.kind == NONFINITE}
    assert set(got) == {n for n in ("s", "y") if stats.tensors[n].nan_count} and "s" in got
    assert "1 NaN" in got["s"].text and got["s"].layers == ("sqrt",)
    assert apply_fix(Review(), got["s"].fix).choice("s").float_kept
