"""Per-layer isolated / accumulated error equals a plain numpy recomputation on a tiny graph; the sample
model keeps its accuracy with KL scales; streaming, cancelling and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import Batch, CalibrationSource, open_source
from quantviz.errors import CancelledError, QuantvizError
from quantviz.model import LoadedModel, load_model
from quantviz.qdq import build_qdq_model
from quantviz.sensitivity import LayerReport, analyze, layer_error
from quantviz.table import CalibrationTable, TensorEntry, calibrate_model

from .conftest import spec_session
from .graphs import IR_VERSION, OPSET

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
F32 = np.float32
Arrays = dict[str, np.ndarray]
# the tiny graph: model, source, table, weights, x, labels, float reference per tensor, asymmetric table
Tiny = tuple[LoadedModel, CalibrationSource, CalibrationTable, Arrays, np.ndarray, np.ndarray, Arrays, CalibrationTable]

# ---------------------------------------------------------------------------------------------
# x[N,2,6,6] -> Conv(w[3,2,3,3], b, pad 1) -> c -> Relu -> r -> Flatten -> f -> Gemm(W[5,108]^T, bias) -> y


def tiny_graph(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays = {
        "w": (rng.standard_normal((3, 2, 3, 3)) * 0.4).astype(F32),
        "b": (rng.standard_normal(3) * 0.2).astype(F32),
        "W": (rng.standard_normal((5, 108)) * 0.1).astype(F32),
        "B": (rng.standard_normal(5) * 0.1).astype(F32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W", "B"], ["y"], name="gemm", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(m)
    return m, arrays


# numpy oracle: ONNX QuantizeLinear (x / s in float32, round half to even, + zero point, saturate to int8
# -128..127 or uint8 0..255) and DequantizeLinear ((q - zp) * s in float32); weights symmetric per output
# channel with the given scales,
# bias int32 with scale s_x * s_w (onnxruntime's QDQ quantizer); float ops in float64.


def fq(v: np.ndarray, s: float, zp: int = 0, qrange: tuple[int, int] = (-128, 127)) -> np.ndarray:
    q: np.ndarray = np.clip(np.round(v.astype(F32) / F32(s)) + zp, *qrange)
    return ((q - zp).astype(F32) * F32(s)).astype(np.float64)


def fq_weight(w: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    s = scales.astype(F32).reshape(shape)
    return (np.clip(np.round(w.astype(F32) / s), -128, 127).astype(F32) * s).astype(np.float64)


def fq_bias(b: np.ndarray, s_in: float, s_w: np.ndarray) -> np.ndarray:
    bs = (F32(s_in) * s_w.astype(F32)).astype(F32)
    q = np.round(b.astype(np.float64) / bs.astype(np.float64))
    return (q.astype(F32) * bs).astype(np.float64)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv with stride 1 and padding 1, by an explicit loop over the kernel taps."""
    n, _, h, wd = x.shape
    m, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, m, h, wd))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + h, j : j + wd]  # [n, c, h, w]
            out += np.einsum("nchw,mc->nmhw", patch, w[:, :, i, j])
    return np.asarray(out + b.reshape(1, -1, 1, 1))


def cos_snr_mse(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    cos = np.mean([float(p @ q / (np.linalg.norm(p) * np.linalg.norm(q))) for p, q in zip(a2, b2, strict=True)])
    snr = 10 * math.log10(float(np.sum(a2**2)) / float(np.sum((a2 - b2) ** 2)))
    return float(cos), snr, float(np.mean((a2 - b2) ** 2))


def table_for(tensors: dict[str, np.ndarray], arrays: dict[str, np.ndarray], clip: float) -> CalibrationTable:
    """Thresholds = clip * max|t| (so some values saturate); weight scales = max|w_c| / 127 per channel."""
    entries = {}
    for name, v in tensors.items():
        t = float(np.abs(v).max()) * clip
        s = float(F32(t) / F32(127))
        entries[name] = TensorEntry("test", -t, t, t, s, 0)
    w_scales = {
        "w": np.abs(arrays["w"]).reshape(3, -1).max(axis=1).astype(F32) / F32(127),
        "W": np.abs(arrays["W"]).max(axis=1).astype(F32) / F32(127),
    }
    weights = {n: {"axis": 0, "per_channel": True, "scales": [float(v) for v in s]} for n, s in w_scales.items()}
    return CalibrationTable("tiny", "", {"symmetric": True, "method": "test"}, entries, weights=weights)


def asymmetric(table: CalibrationTable, tensors: dict[str, np.ndarray]) -> CalibrationTable:
    """uint8 [min, max] per tensor: s = (max - min) / 255, zp = round(-min / s) (0 inside the range)."""
    entries = {}
    for name, v in tensors.items():
        lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        s = float(F32((hi - lo) / 255))
        zp = int(np.clip(round(-lo / s), 0, 255))
        entries[name] = TensorEntry("test", -zp * s, (255 - zp) * s, max(abs(lo), hi), s, zp)
    return CalibrationTable("tiny", "", {"symmetric": False, "method": "test"}, entries, weights=table.weights)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return make_tiny(tmp_path_factory)


def make_tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The tiny graph loaded, 10 samples, a table clipping at 0.8 of each range, the numpy references."""
    proto, arrays = tiny_graph()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 2, 6, 6)).astype(F32)
    labels = rng.integers(0, 5, 10)
    # float reference with numpy, used for the table and the oracle
    c = conv2d(x.astype(np.float64), arrays["w"].astype(np.float64), arrays["b"].astype(np.float64))
    r = np.maximum(c, 0)
    f = r.reshape(len(r), -1)
    y = f @ arrays["W"].T.astype(np.float64) + arrays["B"]
    table = table_for({"x": x, "c": c, "r": r, "f": f, "y": y}, arrays, clip=0.8)
    d = tmp_path_factory.mktemp("tiny")
    np.savez(d / "data.npz", x=x)
    model = load_model(proto.SerializeToString())
    source = open_source(d / "data.npz", model.inputs)
    refs = {"c": c, "r": r, "f": f, "y": y}
    return model, source, table, arrays, x, labels, refs, asymmetric(table, {"x": x, **refs})


def oracle(table: CalibrationTable, arrays: Arrays, x: np.ndarray, ref: Arrays) -> tuple[Arrays, Arrays]:
    """Isolated and accumulated outputs of every layer, by hand (see the notes above fq)."""
    qrange = (-128, 127) if table.settings["symmetric"] else (0, 255)

    def q(v: np.ndarray, name: str) -> np.ndarray:  # an activation through its Q/DQ pair
        e = table.tensors[name]
        return fq(v, e.scale, e.zero_point, qrange)

    ws = {n: np.asarray(v["scales"], dtype=F32) for n, v in table.weights.items()}
    wq = fq_weight(arrays["w"], ws["w"], 0)
    Wq = fq_weight(arrays["W"], ws["W"], 0)
    bq = fq_bias(arrays["b"], table.tensors["x"].scale, ws["w"])
    Bq = fq_bias(arrays["B"], table.tensors["f"].scale, ws["W"])

    def conv_q(inp: np.ndarray) -> np.ndarray:
        return q(conv2d(q(inp, "x"), wq, bq), "c")

    def relu_q(inp: np.ndarray) -> np.ndarray:
        return q(np.maximum(q(inp, "c"), 0), "r")

    def flatten_q(inp: np.ndarray) -> np.ndarray:
        # Flatten itself is left to float, but it reads the Relu's Q/DQ pair and the Gemm quantizes its output
        return q(q(inp, "r").reshape(len(inp), -1), "f")

    def gemm_q(inp: np.ndarray) -> np.ndarray:
        return q(q(inp, "f") @ Wq.T + Bq, "y")

    xd = x.astype(np.float64)
    isolated = {"conv": conv_q(xd), "relu": relu_q(ref["c"]), "flatten": flatten_q(ref["r"]), "gemm": gemm_q(ref["f"])}
    c_a = conv_q(xd)
    r_a = q(np.maximum(c_a, 0), "r")
    f_a = q(r_a.reshape(len(r_a), -1), "f")
    y_a = gemm_q(f_a)
    accumulated = {"conv": c_a, "relu": r_a, "flatten": f_a, "gemm": y_a}
    return isolated, accumulated


OUT = {"conv": "c", "relu": "r", "flatten": "f", "gemm": "y"}


def as_engine(layer: str, values: np.ndarray) -> np.ndarray:
    """A layer's output as an engine computes it: the tiny graph's Conv feeds only its Relu, so the two
    run as one fused op whose output is the Relu's: the Conv is compared after max(., 0), on both sides."""
    return np.maximum(values, 0) if layer == "conv" else values


def check_against_oracle(report: LayerReport, table: CalibrationTable, arrays: Arrays, x: np.ndarray, ref: Arrays) -> Arrays:
    isolated, accumulated = oracle(table, arrays, x, ref)
    for le in report.layers:
        assert le.output_tensor == OUT[le.layer]
        for got, want in ((le.isolated, isolated[le.layer]), (le.accumulated, accumulated[le.layer])):
            cos, snr, mse = cos_snr_mse(as_engine(le.layer, ref[OUT[le.layer]]), as_engine(le.layer, want))
            assert got.samples == 10
            # tolerances far below the effect of e.g. leaving the int32 bias unquantized (1e-6 / 1e-3 / 2e-4)
            assert got.cosine == pytest.approx(cos, abs=1e-8), le.layer
            assert got.snr_db == pytest.approx(snr, abs=1e-4), le.layer
            assert got.mse == pytest.approx(mse, rel=1e-5), le.layer
    return accumulated


def test_tiny_graph_equals_numpy(tiny: Tiny) -> None:
    model, source, table, arrays, x, labels, ref, _ = tiny
    report = analyze(model, table, source, batch_size=4, labels=labels)  # 10 samples: batches 4, 4, 2
    assert [le.layer for le in report.layers] == ["conv", "relu", "flatten", "gemm"]
    accumulated = check_against_oracle(report, table, arrays, x, ref)
    # the first layer sees float input either way
    assert report.layers[0].isolated == report.layers[0].accumulated
    # end to end: the Gemm output is the model output
    (out,) = report.outputs
    y, y_a = ref["y"], accumulated["gemm"]
    cos, snr, mse = cos_snr_mse(y, y_a)
    assert out.output == "y" and out.figures.cosine == pytest.approx(cos, abs=1e-8)
    assert out.figures.snr_db == pytest.approx(snr, abs=1e-4)
    assert out.top1_agreement == pytest.approx(np.mean(y.argmax(1) == y_a.argmax(1)))
    assert out.accuracy_float == pytest.approx(np.mean(y.argmax(1) == labels))
    assert out.accuracy_quantized == pytest.approx(np.mean(y_a.argmax(1) == labels))


def test_asymmetric_uint8_equals_numpy(tiny: Tiny) -> None:
    model, source, _, arrays, x, _, ref, table = tiny
    assert any(e.zero_point not in (0, 255) for e in table.tensors.values())
    report = analyze(model, table, source, batch_size=5)
    assert [le.layer for le in report.layers] == ["conv", "relu", "flatten", "gemm"]  # the Relu is kept
    check_against_oracle(report, table, arrays, x, ref)


def test_fused_conv_relu_is_compared_after_the_relu(tiny: Tiny) -> None:
    """The Conv feeds only its Relu: an engine runs them as one op whose uint8 output has the Relu
    output's [0, max] range (the shared scale). Compared before the Relu, every negative value the
    quantizer clips to 0 would count as error although the Relu drops it anyway; analyze compares both
    sides after the Relu (the numpy oracle does the same), so the Conv's error is its real one."""
    model, source, _, arrays, x, _, ref, table = tiny
    shared = table.with_entry("c", table.tensors["r"])  # the fused pair's one scale, from the Relu's output
    assert shared.tensors["c"].zero_point == 0  # [0, max]: negatives are clipped at the zero point
    report = analyze(model, shared, source)
    check_against_oracle(report, shared, arrays, x, ref)
    conv = next(le for le in report.layers if le.layer == "conv")
    isolated, _ = oracle(shared, arrays, x, ref)
    before_relu, _, _ = cos_snr_mse(ref["c"], isolated["conv"])  # what a pre-activation comparison reports
    assert before_relu < 0.9 < 0.999 < conv.isolated.cosine


def test_layer_error_matches_analysis(tiny: Tiny) -> None:
    model, source, table, arrays, x, _, ref, _ = tiny
    isolated, _ = oracle(table, arrays, x, ref)
    for layer in ("relu", "gemm"):
        got = layer_error(model, table, layer, source, batch_size=3)
        cos, snr, _ = cos_snr_mse(ref[OUT[layer]], isolated[layer])
        assert got.cosine == pytest.approx(cos, abs=1e-8) and got.snr_db == pytest.approx(snr, abs=1e-4)
    with pytest.raises(QuantvizError, match="not a quantized layer"):
        layer_error(model, table, "nope", source)


def test_threshold_change_moves_only_what_it_should(tiny: Tiny) -> None:
    """Halving the Relu output's threshold changes the Relu's isolated error (its output scale) and the
    accumulated error downstream, and the Flatten's (it reads r), but not the isolated error of the
    Conv or the Gemm (they neither read nor write r)."""
    model, source, table, arrays, x, _, ref, _ = tiny
    e = table.tensors["r"]
    t = e.threshold / 2
    changed = table.with_entry("r", TensorEntry("test", -t, t, t, float(F32(t) / F32(127)), 0))
    base = {le.layer: le for le in analyze(model, table, source).layers}
    new_report = analyze(model, changed, source)
    check_against_oracle(new_report, changed, arrays, x, ref)  # r and f now have different scales
    new = {le.layer: le for le in new_report.layers}
    assert new["conv"].isolated == base["conv"].isolated
    assert new["relu"].isolated.mse > base["relu"].isolated.mse
    assert new["flatten"].isolated.mse > base["flatten"].isolated.mse  # reads r through r's Q/DQ pair
    assert new["gemm"].isolated == base["gemm"].isolated
    assert new["gemm"].accumulated != base["gemm"].accumulated


class Recorder:
    """Wraps a source and records every fetched range (the analysis must stream by batches)."""

    def __init__(self, source: CalibrationSource) -> None:
        self.calls: list[tuple[int, int]] = []
        self.source = source

    def wrap(self) -> CalibrationSource:
        def fetch(start: int, stop: int) -> Batch:
            self.calls.append((start, stop))
            return self.source.fetch(start, stop)

        return CalibrationSource("rec", "rec", self.source.num_samples, False, fetch)


def test_streams_and_reports_progress_and_cancels(tiny: Tiny) -> None:
    model, source, table, *_ = tiny
    rec = Recorder(source)
    seen: list[tuple[int, int]] = []
    small = analyze(model, table, rec.wrap(), samples=7, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    # every sample once, one batch at a time; the first sample runs alone (it measures the bytes of a
    # sample's layer outputs, which bound the batch size: quantviz.sensitivity.ANALYZE_BATCH_BYTES)
    assert rec.calls == [(0, 1), (1, 4), (4, 7)]
    assert seen == [(0, 7), (1, 7), (4, 7), (7, 7)]
    assert small.samples == 7
    one = analyze(model, table, source, samples=7, batch_size=7)
    for a, b in zip(small.layers, one.layers, strict=True):  # batching does not change the figures
        assert a.accumulated.cosine == pytest.approx(b.accumulated.cosine, abs=1e-12)
        assert a.isolated.mse == pytest.approx(b.isolated.mse, rel=1e-9)
    calls = iter([False, True])
    with pytest.raises(CancelledError):
        analyze(model, table, source, batch_size=2, cancel=lambda: next(calls))


def test_bad_input(tiny: Tiny) -> None:
    model, source, table, *_ = tiny
    bad = table.with_entry("ghost", TensorEntry("test", -1, 1, 1, 1 / 127, 0))
    with pytest.raises(QuantvizError, match="does not have"):
        analyze(model, bad, source)
    with pytest.raises(QuantvizError, match="labels for 10 samples"):
        analyze(model, table, source, labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(QuantvizError, match="at least 1"):
        analyze(model, table, source, samples=0)


@pytest.mark.slow
def test_sample_model_accuracy_with_kl_and_minmax() -> None:
    model = load_model(SAMPLES / "digits_cnn.onnx")
    calib = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, calib, CollectConfig())
    ev = np.load(SAMPLES / "digits_eval.npz")
    evs = open_source(SAMPLES / "digits_eval.npz", model.inputs)
    float_sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    float_probs = float_sess.run(None, {"input": ev["input"]})[0]
    float_acc = float(np.mean(float_probs.argmax(1) == ev["label"]))
    figures = {}
    for method in ("kl", "minmax"):
        table = calibrate_model(model, stats, method)
        report = analyze(model, table, evs, batch_size=64, labels=ev["label"])
        (out,) = report.outputs
        # independent end to end: the QDQ model in a plain onnxruntime session
        q = spec_session(build_qdq_model(model, table))
        q_probs = q.run(None, {"input": ev["input"]})[0]
        assert out.accuracy_float == pytest.approx(float_acc)
        assert out.accuracy_quantized == pytest.approx(float(np.mean(q_probs.argmax(1) == ev["label"])))
        assert out.top1_agreement == pytest.approx(float(np.mean(q_probs.argmax(1) == float_probs.argmax(1))))
        assert out.figures.cosine > 0.99
        assert out.accuracy_quantized is not None and abs(out.accuracy_quantized - float_acc) <= 0.01
        assert {le.op_type for le in report.layers} >= {"Conv", "Relu", "Add", "Concat", "Gemm"}
        assert sum(le.op_type == "Conv" for le in report.layers) == 6
        figures[method] = out.accuracy_quantized
    kl, mm = figures["kl"], figures["minmax"]
    print(f"\ndigits_cnn accuracy on digits_eval.npz: float {float_acc:.4f}, KL {kl:.4f}, minmax {mm:.4f}")


def _fq(x: np.ndarray, scale: float) -> np.ndarray:
    return (np.clip(np.round(x / np.float32(scale)), -128, 127) * np.float32(scale)).astype(F32)


def test_sample_model_isolated_gemm_equals_numpy() -> None:
    """The isolated error of the classifier's Gemm, recomputed with numpy from the QDQ model's own int8
    weights, int32 bias and scales (onnxruntime's extended optimizations once broke this figure)."""
    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig(samples=64))
    table = calibrate_model(model, stats, "kl")
    report = analyze(model, table, source, samples=64)
    qdq = build_qdq_model(model, table)
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    gemm = next(n for n in qdq.graph.node if n.op_type == "Gemm")
    le = next(le for le in report.layers if le.op_type == "Gemm")
    assert le.layer == gemm.name
    x_name, y_name = "/Flatten_output_0", le.output_tensor
    # the float activations (a plain session with those two as outputs)
    m = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in (x_name, y_name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(SAMPLES / "digits_calib.npz")["input"][:64]
    fx, fy = sess.run([x_name, y_name], {"input": x})
    w = inits["fc.weight_quantized"].astype(F32) * inits["fc.weight_scale"].astype(F32).reshape(-1, 1)
    b = inits["fc.bias_quantized"].astype(F32) * inits["fc.bias_quantized_scale"].astype(F32)
    s_x = float(inits[f"{x_name}_scale"])
    s_y = float(inits[f"{y_name}_scale"])
    y_hat = _fq(_fq(fx, s_x) @ w.T + b, s_y)
    cos = np.sum(fy * y_hat, axis=1) / (np.linalg.norm(fy, axis=1) * np.linalg.norm(y_hat, axis=1))
    assert le.isolated.cosine == pytest.approx(float(cos.mean()), abs=1e-5)
    assert le.isolated.mse == pytest.approx(float(np.mean((fy - y_hat) ** 2)), rel=1e-3)
    first = report.layers[0]  # its inputs are the graph inputs: isolated and accumulated are the same
    assert first.isolated.cosine == pytest.approx(first.accumulated.cosine, abs=1e-9)


def _report(cosines: dict[str, tuple[float, float]]) -> LayerReport:
    from quantviz.metrics import ErrorFigures
    from quantviz.sensitivity import LayerError

    def fig(c: float) -> ErrorFigures:
        return ErrorFigures(cosine=c, snr_db=0.0, mse=0.0, samples=1)

    layers = tuple(LayerError(n, "Conv", n + "_out", fig(i), fig(a)) for n, (i, a) in cosines.items())
    return LayerReport("m", "", 1, 1, "", False, True, True, {}, {}, layers, ())


def test_compare_methods_picks_the_highest_cosine_ties_keep_the_first() -> None:
    from quantviz.sensitivity import compare_methods

    reports = {
        "kl": _report({"a": (0.90, 0.80), "b": (0.99, 0.95), "c": (math.nan, 0.5)}),
        "minmax": _report({"a": (0.95, 0.70), "b": (0.99, 0.97), "c": (0.7, 0.4)}),
        "mse": _report({"a": (0.93, 0.85)}),  # b and c kept float there
    }
    iso = compare_methods(reports)
    assert {k: (p.method, p.cosine) for k, p in iso.items()} == {"a": ("minmax", 0.95), "b": ("kl", 0.99), "c": ("minmax", 0.7)}
    assert iso["a"].output_tensor == "a_out" and iso["a"].cosines == {"kl": 0.90, "minmax": 0.95, "mse": 0.93}
    acc = compare_methods(reports, mode="accumulated")
    assert {k: p.method for k, p in acc.items()} == {"a": "mse", "b": "minmax", "c": "kl"}
    with pytest.raises(QuantvizError, match="isolated"):
        compare_methods(reports, mode="both")


def test_best_method_table_puts_each_pick_on_its_tensor() -> None:
    from quantviz.calib import METHODS, MethodConfig
    from quantviz.sensitivity import best_method_table

    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig(samples=64))
    seen: list[tuple[int, int]] = []
    table, picks = best_method_table(
        model, stats, source, ["kl", "minmax", "mse"], samples=32, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (96, 96)  # 3 methods x 32 samples
    assert table.settings["method"] == "best" and table.settings["best"]["candidates"] == ["kl", "minmax", "mse"]
    fused = {n for n, e in table.tensors.items() if e.scale_from}
    assert fused
    applied = 0
    for p in picks.values():
        assert p.cosine >= max(p.cosines.values()) - 1e-9 and set(p.cosines) == {"kl", "minmax", "mse"}  # ties keep the first
        if p.output_tensor in fused:
            continue
        e = table.tensors[p.output_tensor]
        want = METHODS[p.method](stats.tensors[p.output_tensor], MethodConfig())  # the method's own threshold
        assert e.method == p.method and e.threshold == pytest.approx(want.threshold, rel=1e-12), p.layer
        assert e.extra["best"]["cosines"] == p.cosines
        applied += p.method != "kl"
    assert applied >= 1  # on this model some layer prefers another method than KL
    with pytest.raises(QuantvizError, match="at least one method"):
        best_method_table(model, stats, source, [])


def test_default_labels_from_a_path_or_an_upload(tmp_path: Path) -> None:
    import io

    from quantviz.data import default_labels

    buf = io.BytesIO()
    np.savez(buf, input=np.zeros((3, 2), np.float32), label=np.array([2, 0, 1]))
    (tmp_path / "e.npz").write_bytes(buf.getvalue())
    for src in (tmp_path / "e.npz", buf.getvalue()):
        np.testing.assert_array_equal(default_labels(src), [2, 0, 1])
    nolab = io.BytesIO()
    np.savez(nolab, input=np.zeros((3, 2), np.float32))
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    assert default_labels(nolab.getvalue()) is None and default_labels(npy.getvalue()) is None
    assert default_labels(b"not a file") is None and default_labels(tmp_path / "missing.npz") is None


def test_best_method_is_never_worse_end_to_end_than_one_method_everywhere() -> None:
    """The whole-model check of best_method_picks: the best table's end-to-end cosine, analysed
    independently on the same samples, is at least that of each candidate's own table."""
    from quantviz.sensitivity import best_method_table
    from quantviz.table import calibrate_model

    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig(samples=64))
    methods = ["kl", "minmax", "percentile"]
    table, picks = best_method_table(model, stats, source, methods, samples=16)

    def end_to_end(t: CalibrationTable) -> float:
        r = analyze(model, t, source, samples=16)
        return float(np.mean([o.figures.cosine for o in r.outputs]))

    singles = {m: end_to_end(calibrate_model(model, stats, m)) for m in methods}
    assert end_to_end(table) >= max(singles.values()) - 0.005  # WHOLE_MODEL_TOLERANCE
    note = table.settings["best"].get("whole_model", "")
    assert all(p.note == note for p in picks.values())
    if note:  # one method everywhere: the table is that method's own
        (m,) = {p.method for p in picks.values()}
        assert end_to_end(table) == pytest.approx(singles[m], abs=1e-9)
