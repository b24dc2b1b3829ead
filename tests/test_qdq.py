"""The QDQ builder: every activation QuantizeLinear carries exactly the table's scale (float32), weight
scales are the table's, the model runs in onnxruntime, nothing is written to the working directory.
The scales are read from the written model here with onnx.numpy_helper (not with quantviz code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from quantviz.calib import MethodConfig
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.errors import QuantvizError
from quantviz.model import LoadedModel, load_model
from quantviz.qdq import build, build_qdq_model, int8_kernels_saturate
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable, TensorEntry, calibrate, calibrate_model

from .conftest import ort_run_with_outputs, spec_session
from .graphs import conv_bn_relu

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def q_scales(proto: onnx.ModelProto) -> dict[str, tuple[np.ndarray, int]]:
    """Activation QuantizeLinear nodes: quantized float tensor -> (scale, zero point), read directly.
    onnxruntime renames a quantized graph output 'y' to 'y_QuantizeLinear_Input'."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    out: dict[str, tuple[np.ndarray, int]] = {}  # a 0-d float32 array: the scale as stored
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            name = n.input[0].removesuffix("_QuantizeLinear_Input")
            out[name] = (inits[n.input[1]].astype(np.float32).reshape(()), int(inits[n.input[2]].reshape(())))
    return out


def dq_weight_scales(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """DequantizeLinear of an int8 initializer '<w>_quantized' -> its scales."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8:
            out[n.input[0].removesuffix("_quantized")] = inits[n.input[1]].astype(np.float32).reshape(-1)
    return out


def node_inputs_dequantized(proto: onnx.ModelProto, node_name: str) -> bool:
    producers = {o: n for n in proto.graph.node for o in n.output}
    node = next(n for n in proto.graph.node if n.name == node_name)
    return any(i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input)


Cnn = tuple[LoadedModel, CalibrationStats]  # the sample model and its statistics


@pytest.fixture(scope="module")
def cnn() -> Cnn:
    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig(samples=64))
    return model, stats


def check_scales_equal_table(proto: onnx.ModelProto, table: CalibrationTable) -> int:
    got = q_scales(proto)
    for name, (scale, zp) in got.items():
        entry = table.tensors[name]
        assert scale == np.float32(entry.scale), name  # exact, float32
        assert zp == entry.zero_point, name
    return len(got)


def test_sample_model_scales_are_the_tables(cnn: Cnn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, stats = cnn
    table = calibrate_model(model, stats, "kl")
    monkeypatch.chdir(tmp_path)
    proto = build_qdq_model(model, table)
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory
    checked = check_scales_equal_table(proto, table)
    # every tensor of the table that remains after BN folding and feeds or leaves a quantized op
    folded_away = {t for t in table.tensors if t.endswith("/Conv_output_0")}
    assert folded_away and not folded_away & set(q_scales(proto))
    assert checked >= 19
    # weight scales are the table's per-channel scales, bit for bit
    w = dq_weight_scales(proto)
    assert set(table.weights) <= set(w)
    for name, spec in table.weights.items():
        assert np.array_equal(w[name], np.asarray(spec["scales"], dtype=np.float32)), name
    # it runs, and gives probabilities close to float
    x = np.load(SAMPLES / "digits_eval.npz")["input"][:32]
    q = spec_session(proto).run(None, {"input": x})[0]
    f = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert q.shape == f.shape and np.abs(q - f).max() < 0.1


def test_asymmetric_table_gets_uint8_zero_points(cnn: Cnn) -> None:
    model, stats = cnn
    table = calibrate(stats, "minmax", MethodConfig(symmetric=False))
    proto = build_qdq_model(model, table)
    assert check_scales_equal_table(proto, table) >= 19
    zps = {n: zp for n, (_, zp) in q_scales(proto).items()}
    assert any(z != 0 for z in zps.values())  # the input (0..1) and Conv outputs have real zero points
    dtypes = {
        numpy_helper.to_array(i).dtype
        for i in proto.graph.initializer
        if i.name.endswith("_zero_point") and not any(i.name.startswith(w) for w in table.weights)
    }
    assert np.dtype(np.uint8) in dtypes
    ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def small_table(names_scales: dict[str, float], float_kept: frozenset[str] = frozenset()) -> CalibrationTable:
    tensors = {
        n: TensorEntry("test", -s * 127, s * 127, s * 127, float(np.float32(s)), 0, float_kept=n in float_kept)
        for n, s in names_scales.items()
    }
    return CalibrationTable("m", "", {"symmetric": True}, tensors)


CBR_SCALES = {"x": 0.02, "conv_out": 0.05, "bn_out": 0.04, "relu_out": 0.03, "add_out": 0.06, "out": 0.07}
CBR_X = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)


def absmax_scales() -> dict[str, float]:
    """s = max|t| / 127 of every tensor of conv_bn_relu on CBR_X (plain onnxruntime)."""
    values = ort_run_with_outputs(conv_bn_relu(), list(CBR_SCALES)[1:], {"x": CBR_X})
    values["x"] = CBR_X
    return {n: float(np.abs(v).max()) / 127 for n, v in values.items()}


def test_batchnorm_folded_and_scales_placed() -> None:
    # x -> Conv -> BN -> Relu -> Add(relu, bn) -> Concat(relu, add) -> out
    model = load_model(conv_bn_relu().SerializeToString())
    scales = absmax_scales()
    b = build(model, small_table(scales))
    assert "conv_out" not in {o for n in b.proto.graph.node for o in n.output}  # folded away
    assert not any(n.op_type == "BatchNormalization" for n in b.proto.graph.node)
    got = q_scales(b.proto)
    assert set(got) == {"x", "bn_out", "relu_out", "add_out", "out"}
    for name, (scale, _) in got.items():
        assert scale == np.float32(scales[name])
    # the folded, quantized model still computes the float model (within int8 error) in onnxruntime
    x = CBR_X
    q = spec_session(b.proto).run(None, {"x": x})[0]
    f = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(q - f).max() < 0.05 * np.abs(f).max() and np.corrcoef(q.ravel(), f.ravel())[0, 1] > 0.99


def test_float_kept_and_only_nodes() -> None:
    model = load_model(conv_bn_relu().SerializeToString())
    # the folded Conv's output (bn_out) is marked float: the Conv keeps float weights and reads float x;
    # its output is still quantized where int8 consumers (Relu, Add) read it, as an engine must
    b = build(model, small_table(CBR_SCALES, frozenset({"bn_out"})))
    assert "conv" in b.kept_float and "marked float" in b.kept_float["conv"]
    assert not node_inputs_dequantized(b.proto, "conv")
    assert "x" not in q_scales(b.proto) and "bn_out" in q_scales(b.proto)
    assert not dq_weight_scales(b.proto)
    assert node_inputs_dequantized(b.proto, "add")
    # only one node quantized
    only = build(model, small_table(CBR_SCALES), only_nodes={"add"})
    assert node_inputs_dequantized(only.proto, "add")
    assert not node_inputs_dequantized(only.proto, "conv") and not dq_weight_scales(only.proto)
    # the Add's inputs and output only (Concat reads the same shared Q/DQ pairs but adds none)
    assert set(q_scales(only.proto)) == {"relu_out", "bn_out", "add_out"}
    # float_nodes given by the caller
    b2 = build(model, small_table(CBR_SCALES), float_nodes={"conv"})
    assert not node_inputs_dequantized(b2.proto, "conv") and "conv" in b2.kept_float


def test_missing_entry_keeps_node_float() -> None:
    model = load_model(conv_bn_relu().SerializeToString())
    scales = {k: v for k, v in CBR_SCALES.items() if k != "add_out"}
    b = build(model, small_table(scales))
    assert "add" in b.kept_float and "add_out" in b.kept_float["add"]
    assert "add_out" not in q_scales(b.proto)
    ort.InferenceSession(b.proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_table_for_another_model_is_refused() -> None:
    model = load_model(conv_bn_relu().SerializeToString())
    with pytest.raises(QuantvizError, match="does not have.*'nope'"):
        build_qdq_model(model, small_table({**CBR_SCALES, "nope": 0.1}))
    with pytest.raises(QuantvizError, match="no node named"):
        build_qdq_model(model, small_table(CBR_SCALES), float_nodes={"bn"})  # folded away


def test_reduce_range_gives_7bit_weights_that_fused_kernels_run_as_written(cnn: Cnn) -> None:
    """reduce_range: every int8 weight within -63..63, its scale the table's times 127/63, and the
    model computes the same in onnxruntime's fused int8 kernels (default session) as with its Q/DQ
    nodes run as the spec defines them, on any x86 CPU (with 8-bit weights the fused u8s8 kernels
    saturate on AVX2 CPUs without VNNI)."""
    model, stats = cnn
    table = calibrate_model(model, stats, "kl")
    proto = build_qdq_model(model, table, reduce_range=True)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    weights = {n: a for n, a in inits.items() if n.endswith("weight_quantized")}
    assert weights and all(np.abs(a.astype(np.int32)).max() <= 63 for a in weights.values())
    assert max(int(np.abs(a.astype(np.int32)).max()) for a in weights.values()) == 63  # the range is used
    w = dq_weight_scales(proto)
    for name, spec in table.weights.items():
        want = np.asarray(spec["scales"], dtype=np.float64) * 127 / 63
        np.testing.assert_allclose(w[name], want, rtol=1e-6, err_msg=name)
    x = np.load(SAMPLES / "digits_eval.npz")["input"][:64]
    fused = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    spec = spec_session(proto).run(None, {"input": x})[0]
    f = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(fused - spec).max() < 0.02
    assert np.mean(fused.argmax(1) == f.argmax(1)) >= 0.98


def test_int8_kernels_saturate_from_cpu_flags() -> None:
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert int8_kernels_saturate(avx2, "x86_64") is True
    assert int8_kernels_saturate(avx2.replace("fma", "fma avx512_vnni"), "x86_64") is False
    assert int8_kernels_saturate(avx2.replace("fma", "fma avx_vnni"), "AMD64") is False
    assert int8_kernels_saturate("flags\t: fpu sse2 avx\n", "x86_64") is False  # no AVX2: no u8s8 AVX2 kernel
    assert int8_kernels_saturate(avx2, "aarch64") is False
    assert int8_kernels_saturate("", "x86_64") is False
