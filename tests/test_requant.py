"""Fixed-point multipliers and integer requantization.

Oracles: exact rational arithmetic and a scalar port of gemmlowp's reference code written here; on
the real sample model, int32 accumulators from an im2col written here (cross-checked with a plain
onnxruntime Conv on integer-valued floats) and float requantization round(acc * M).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.export.qv_json import dumps, loads
from quantviz.fakequant import quantize_multiplier, requantize
from quantviz.fold import fold_batchnorm
from quantviz.model import LoadedModel, load_model
from quantviz.table import CalibrationTable, calibrate_model

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits_cnn.onnx"
CALIB = ROOT / "sample_models" / "digits_calib.npz"
BIG = 1 << 40  # clip bounds wide enough to compare unclipped values


# ---------------------------------------------------------------- quantize_multiplier

@pytest.mark.parametrize(
    ("m", "m0", "k"),
    [(0.5, 1 << 30, 31), (0.75, 3 << 29, 31), (1.0, 1 << 30, 30), (0.25, 1 << 30, 32), (1.5, 3 << 29, 30), (0.0, 0, 0), (2.0**-40, 0, 0)],
)
def test_quantize_multiplier_hand_cases(m: float, m0: int, k: int) -> None:
    assert quantize_multiplier(m) == (m0, k)


@given(st.floats(min_value=2.0**-30, max_value=1000.0, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_quantize_multiplier_range_and_precision(m: float) -> None:
    m0, k = quantize_multiplier(m)
    assert (1 << 30) <= m0 < (1 << 31) and 0 <= k <= 62
    # |M0 * 2^-k - M| <= half a unit of the 31-bit mantissa, exactly.
    assert abs(Fraction(m0, 1 << k) - Fraction(m)) <= Fraction(1, 1 << (k + 1))


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, 2.0**31])
def test_quantize_multiplier_refuses_bad_values(bad: float) -> None:
    with pytest.raises(ValueError):
        quantize_multiplier(bad)


# ---------------------------------------------------------------- requantize vs slow references

def round_half_away(f: Fraction) -> int:
    return int(math.floor(f + Fraction(1, 2))) if f >= 0 else -int(math.floor(-f + Fraction(1, 2)))


def gemmlowp_scalar(x: int, m0: int, k: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier, ported line by line with Python ints (C semantics)."""
    shift = 31 - k
    left, right = max(shift, 0), max(-shift, 0)
    a = max(min(x * (1 << left), 2**31 - 1), -(2**31))
    if a == m0 == -(2**31):
        hi = 2**31 - 1
    else:
        ab = a * m0
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        t = ab + nudge
        hi = t // (1 << 31) if t >= 0 else -((-t) // (1 << 31))  # truncation toward zero
    mask = (1 << right) - 1
    remainder = hi & mask
    threshold = (mask >> 1) + (1 if hi < 0 else 0)
    return (hi >> right) + (1 if remainder > threshold else 0)


ACCS = st.lists(st.integers(min_value=-(2**31) + 1, max_value=2**31 - 1), min_size=1, max_size=40)
MULTS = st.floats(min_value=1e-6, max_value=3.0, allow_nan=False)


@given(ACCS, MULTS)
@settings(max_examples=200, deadline=None)
def test_single_rounding_is_exact(accs: list[int], m: float) -> None:
    m0, k = quantize_multiplier(m)
    got = requantize(np.array(accs, dtype=np.int64), m0, k, qmin=-BIG, qmax=BIG, rounding="single")
    want = [round_half_away(Fraction(a * m0, 1 << k)) for a in accs]
    assert got.astype(np.int64).tolist() == [max(min(w, 2**31 - 1), -(2**31)) for w in want]


@given(ACCS, MULTS)
@settings(max_examples=200, deadline=None)
def test_gemmlowp_rounding_matches_reference_port(accs: list[int], m: float) -> None:
    m0, k = quantize_multiplier(m)
    got = requantize(np.array(accs, dtype=np.int64), m0, k, qmin=-BIG, qmax=BIG, rounding="gemmlowp")
    assert got.astype(np.int64).tolist() == [max(min(gemmlowp_scalar(a, m0, k), 2**31 - 1), -(2**31)) for a in accs]


def test_ties_and_fused_relu_clip() -> None:
    m0, k = quantize_multiplier(0.5)
    acc = np.array([1, -1, 3, -3])
    assert requantize(acc, m0, k, rounding="single").tolist() == [1, -1, 2, -2]  # half away from zero
    assert requantize(acc, m0, k, rounding="gemmlowp").tolist() == [1, 0, 2, -1]  # SRDHM: ties to +inf
    # Fused ReLU: clip at the output zero point.
    assert requantize(np.array([-500, -2, 2, 500]), *quantize_multiplier(1.0), zero_point=3, qmin=3, qmax=127).tolist() == [3, 3, 5, 127]


def test_per_channel_multipliers_follow_the_axis() -> None:
    acc = np.arange(-60, 60).reshape(2, 3, 4, 5)
    ms = [0.1, 0.02, 0.7]
    pairs = [quantize_multiplier(m) for m in ms]
    got = requantize(acc, [p[0] for p in pairs], [p[1] for p in pairs], axis=1, rounding="single")
    for c, (m0, k) in enumerate(pairs):
        want = [round_half_away(Fraction(int(a) * m0, 1 << k)) for a in acc[:, c].ravel()]
        assert got[:, c].ravel().tolist() == want
    with pytest.raises(ValueError, match="axis"):
        requantize(acc, [p[0] for p in pairs], [p[1] for p in pairs])
    with pytest.raises(ValueError, match="int32"):
        requantize(np.array([2**31]), *quantize_multiplier(0.5))


# ---------------------------------------------------------------- on real layers of the sample model

def im2col_conv(qx: np.ndarray, qw: np.ndarray, pads: list[int], strides: list[int]) -> np.ndarray:
    """Integer convolution, group 1, dilation 1, written independently of quantviz."""
    n, c, h, w = qx.shape
    m, _, kh, kw = qw.shape
    xp = np.pad(qx.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - kw) // strides[1] + 1
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i : i + strides[0] * oh : strides[0], j : j + strides[1] * ow : strides[1]]
    return np.asarray(np.einsum("ncijhw,mcij->nmhw", cols, qw.astype(np.int64)))


def ort_conv_on_integers(qx: np.ndarray, qw: np.ndarray, pads: list[int], strides: list[int]) -> np.ndarray:
    """The same sum with onnxruntime's float Conv: exact, every partial sum is an integer below 2^24."""
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=pads, strides=strides)],
        "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(qx.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(qw.astype(np.float32), "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": qx.astype(np.float32)})[0])


def float_tensors(proto: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {"input": x}), strict=True))


@pytest.fixture(scope="module")
def digits_table() -> tuple[LoadedModel, CalibrationTable]:
    model = load_model(DIGITS)
    stats = collect(model, open_source(CALIB, model.inputs), CollectConfig(samples=128))
    return model, calibrate_model(model, stats, "kl")


@pytest.mark.slow
@pytest.mark.parametrize("rounding", ["gemmlowp", "single"])
def test_integer_requant_reproduces_float_on_real_layers(digits_table: tuple[LoadedModel, CalibrationTable], rounding: str) -> None:
    model, table = digits_table
    folded, _ = fold_batchnorm(model.proto)
    consts = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    layers = [n for n in folded.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 7 and set(table.requant) == {n.name for n in layers}
    x = np.load(CALIB)["input"][:64]
    # Float inputs (and outputs) of every layer from a plain onnxruntime run of the ORIGINAL model.
    acts = float_tensors(model.proto, sorted({n.input[0] for n in layers} | {n.output[0] for n in layers}), x)
    checked = 0
    for node in layers:
        r = table.requant[node.name]
        s_x = table.tensors[node.input[0]].scale
        s_y = table.tensors[node.output[0]].scale
        s_w = np.array(table.weights[node.input[1]]["scales"], dtype=np.float64)
        qx = np.clip(np.round(acts[node.input[0]] / s_x), -127, 127).astype(np.int64)
        w, b = consts[node.input[1]].astype(np.float64), consts[node.input[2]].astype(np.float64)
        shape: tuple[int, ...]
        if node.op_type == "Conv":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            qw = np.clip(np.round(w / s_w[:, None, None, None]), -127, 127).astype(np.int64)
            acc = im2col_conv(qx, qw, list(attrs["pads"]), list(attrs["strides"]))
            np.testing.assert_array_equal(acc, ort_conv_on_integers(qx, qw, list(attrs["pads"]), list(attrs["strides"])))
            shape = (1, -1, 1, 1)
        else:  # Gemm, transB = 1
            qw = np.clip(np.round(w / s_w[:, None]), -127, 127).astype(np.int64)
            acc = qx @ qw.T
            shape = (1, -1)
        qb = np.round(b / (s_x * s_w)).astype(np.int64)
        acc = acc + qb.reshape(shape)
        assert np.abs(acc).max() < 2**31
        m = s_x * s_w / s_y
        np.testing.assert_allclose(r["real_multiplier"], m, rtol=1e-12)
        want = np.round(acc * m.reshape(shape))
        got = requantize(acc, r["multiplier"], r["shift"], axis=1, qmin=-BIG, qmax=BIG, rounding=rounding)
        assert np.abs(got - want).max() <= 1, node.name
        assert np.mean(got != want) < 0.01, node.name  # off by one only on near-ties
        # And the whole integer path tracks the float layer (a fused ReLU clips at zp = 0).
        lo = 0 if r["activation"] else -127
        q = requantize(acc, r["multiplier"], r["shift"], axis=1, qmin=lo, qmax=127, rounding=rounding)
        y = acts[node.output[0]]
        y_ref = np.clip(y, lo * s_y, 127 * s_y)
        cos = float(np.sum(q * s_y * y_ref) / (np.linalg.norm(q * s_y) * np.linalg.norm(y_ref)))
        assert cos > 0.99, (node.name, cos)
        checked += acc.size
    assert checked > 50_000


@pytest.mark.slow
def test_digits_table_weights_and_requant_entries(digits_table: tuple[LoadedModel, CalibrationTable]) -> None:
    model, table = digits_table
    assert set(table.weights) == {"stem.0.weight", "res1.0.weight", "res2.0.weight", "branch_a.0.weight", "branch_b.0.weight", "head.0.weight", "fc.weight"}
    for name, r in table.requant.items():
        assert all((1 << 30) <= m0 < (1 << 31) for m0 in r["multiplier"]), name
        assert len(r["multiplier"]) == len(r["shift"]) == len(table.weights[r["weight"]]["scales"])
        real = [m0 * 2.0 ** -k for m0, k in zip(r["multiplier"], r["shift"], strict=True)]
        np.testing.assert_allclose(real, r["real_multiplier"], rtol=2**-30)
    # Fused layers take the post-activation scale: the stem Conv's output shares /Relu's.
    stem = table.requant["/stem/stem.0/Conv"]
    assert stem["activation"] == "/Relu" and stem["output_scale"] == table.tensors["/Relu_output_0"].scale
    # The residual branch before Add is not fused (its consumer is Add, not a ReLU).
    assert table.requant["/res2/res2.0/Conv"]["activation"] is None
    assert loads(dumps(table)) == table


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quantviz", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_calibrate_writes_weights_and_requant(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    r = _cli("calibrate", str(DIGITS), "--data", str(CALIB), "--samples", "32", "--method", "minmax", "-o", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert len(doc["weights"]) == 7 and len(doc["requant"]) == 7
    assert doc["weights"]["head.0.weight"]["axis"] == 0 and len(doc["weights"]["head.0.weight"]["scales"]) == 32
    assert doc["tensors"]["/stem/stem.1/BatchNormalization_output_0"]["shared_with"] == ["/Relu_output_0"]

    # --stats with --model, per-tensor weights.
    stats = tmp_path / "s.npz"
    assert _cli("collect", str(DIGITS), "--data", str(CALIB), "--samples", "32", "-o", str(stats)).returncode == 0
    out2 = tmp_path / "t2.json"
    r = _cli("calibrate", "--stats", str(stats), "--model", str(DIGITS), "--method", "minmax", "--per-tensor-weights", "-o", str(out2))
    assert r.returncode == 0, r.stderr
    doc2 = json.loads(out2.read_text())
    assert all(len(w["scales"]) == 1 and w["per_channel"] is False for w in doc2["weights"].values())
    assert all(len(q["multiplier"]) == 1 for q in doc2["requant"].values())
    # Statistics of digits_cnn with another model: exit 2 and a sentence.
    other = tmp_path / "other.onnx"
    from tests import graphs

    onnx.save_model(graphs.conv_bn_relu(), str(other))
    r = _cli("calibrate", "--stats", str(stats), "--model", str(other), "--method", "minmax", "-o", str(tmp_path / "t3.json"))
    assert r.returncode == 2 and "lacks" in r.stderr and "Traceback" not in r.stderr


def test_weight_overrides_reach_the_table_and_its_requantization() -> None:
    """apply_model(weight_overrides=...): the chosen per-channel weight scales replace abs-max ones in
    the table, and M = s_x * s_w / s_y (checked here from the table's own scales) follows them."""
    from pathlib import Path

    from quantviz.collect import collect
    from quantviz.config import CollectConfig
    from quantviz.data import open_source
    from quantviz.model import load_model
    from quantviz.table import apply_model, calibrate

    samples = Path(__file__).resolve().parent.parent / "sample_models"
    model = load_model(samples / "digits_cnn.onnx")
    stats = collect(model, open_source(samples / "digits_calib.npz", model.inputs), CollectConfig(samples=32))
    base = apply_model(calibrate(stats, "kl"), model)
    wname = next(iter(base.weights))
    absmax = np.asarray(base.weights[wname]["scales"], dtype=np.float32)
    chosen = (absmax * np.linspace(0.6, 0.9, absmax.size)).astype(np.float32)
    table = apply_model(calibrate(stats, "kl"), model, weight_overrides={wname: chosen.tolist(), "nope": [1.0]}, weight_method="eq")
    w = table.weights[wname]
    assert w["method"] == "eq" and np.array_equal(np.asarray(w["scales"], np.float32), chosen)
    assert np.array_equal(np.asarray(w["absmax_scales"], np.float32), absmax)
    assert table.settings["weight_overrides_ignored"] == {"nope": "no such quantized weight in the model"}
    layer = next(v for v in table.requant.values() if v["weight"] == wname)
    s_x = table.tensors[layer["input"]].scale
    s_y = table.tensors[layer["output"]].scale
    m0 = np.asarray(layer["multiplier"], dtype=np.float64)
    k = np.asarray(layer["shift"], dtype=np.float64)
    want = s_x * chosen.astype(np.float64) / s_y
    np.testing.assert_allclose(np.asarray(layer["real_multiplier"]), want, rtol=1e-6)
    np.testing.assert_allclose(m0 * 2.0 ** (-k), want, rtol=1e-8)  # M0 in [2^30, 2^31), right shift k
    # a wrong length is ignored, not half-applied
    bad = apply_model(calibrate(stats, "kl"), model, weight_overrides={wname: chosen[:1].tolist()})
    assert bad.weights[wname]["scales"] == base.weights[wname]["scales"] and wname in bad.settings["weight_overrides_ignored"]
