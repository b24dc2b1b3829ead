"""Engine profiles (quantviz.profiles) and the truthful output figures (quantviz.outputs), issue 8 items 2 and 4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.cli import main
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import CalibrationSource, open_source
from quantviz.model import LoadedModel, load_model
from quantviz.profiles import PROFILES, placement
from quantviz.qdq import build_qdq_model
from quantviz.review import Review, build_table, load_review, review_bytes
from quantviz.sensitivity import analyze
from quantviz.stats import CalibrationStats
from quantviz.table import apply_model, calibrate_model
from tests.corpus import _save, batch_case, layernorm_decomposed

LN_INSIDE = {"mu", "d", "d2", "var", "ve", "sd", "n", "ng"}


def _stats(path: Path, data: dict[str, np.ndarray], tmp: Path) -> tuple[LoadedModel, CalibrationSource, CalibrationStats]:
    model = load_model(path)
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(tmp / "data.npz", **data)  # type: ignore[arg-type]
    source = open_source(str(tmp / "data.npz"), model.inputs)
    return model, source, collect(model, source, CollectConfig())


def _quantized_tensors(proto: onnx.ModelProto) -> set[str]:
    inits = {i.name for i in proto.graph.initializer}
    return {n.input[0].removesuffix("_QuantizeLinear_Input") for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_ort_profile_reads_onnxruntime_registry() -> None:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    assert PROFILES["ort"].op_types() == set(QDQRegistry) | set(QLinearOpsRegistry)


def test_decomposed_layernorm_kept_float_under_every_profile(tmp_path: Path) -> None:
    case = layernorm_decomposed(tmp_path)
    proto = onnx.load(str(case.path))
    for key in PROFILES:
        p = placement(proto, key)
        assert set(p.float_tensors) >= LN_INSIDE, key
        assert all("LayerNorm" in p.float_tensors[t] for t in LN_INSIDE)
        assert {"add_eps", "mul_gamma", "add_beta"} <= set(p.float_nodes)
    ort_p = placement(proto, "ort")
    assert {"ln", "y"} <= ort_p.quantized  # MatMul reads ln and writes y
    assert "x" in ort_p.float_tensors  # read only by the LayerNorm


def test_layernorm_table_and_qdq_follow_profile(tmp_path: Path) -> None:
    case = layernorm_decomposed(tmp_path)
    model, source, stats = _stats(case.path, case.data, tmp_path)
    table = calibrate_model(model, stats, "kl")
    assert table.settings["profile"] == "ort"
    for t in LN_INSIDE:
        assert table.tensors[t].float_kept and "LayerNorm" in table.tensors[t].extra["profile_float"]
    assert not table.tensors["ln"].float_kept
    qdq = build_qdq_model(model, table)
    quantized = _quantized_tensors(qdq)
    assert not (quantized & LN_INSIDE)
    assert "ln" in quantized
    # the user quantizes one inside tensor anyway: the review's choice wins over the profile
    review = Review().with_choice("var", quantized=True)
    forced = apply_model(build_table(stats, review), model)
    assert not forced.tensors["var"].float_kept and forced.tensors["d"].float_kept
    # keeping the LayerNorm in float is what saves the output (issue 8: cosine 0.08 -> 0.9997)
    everything = Review()
    for t in LN_INSIDE:
        everything = everything.with_choice(t, quantized=True)
    all_q = analyze(model, apply_model(build_table(stats, everything), model), source)
    kept = analyze(model, table, source)
    assert kept.outputs[0].figures.cosine > all_q.outputs[0].figures.cosine


def test_trt_and_ncnn_quantize_where_int8_ops_read(tmp_path: Path) -> None:
    case = batch_case("N")(tmp_path)
    proto = onnx.load(str(case.path))
    trt, ncnn, ortp = (placement(proto, k) for k in ("trt", "ncnn", "ort"))
    # x -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y
    assert {"x", "relu", "conv", "flat"} <= trt.quantized and {"gap", "y"} <= set(trt.float_tensors)
    assert {"x", "flat"} <= ncnn.quantized and {"conv", "relu", "gap", "y"} <= set(ncnn.float_tensors)
    assert {"x", "conv", "relu", "gap", "flat", "y"} <= ortp.quantized
    model, _, stats = _stats(case.path, case.data, tmp_path)
    qdq = build_qdq_model(model, calibrate_model(model, stats, "kl", profile="ncnn"))
    assert _quantized_tensors(qdq) == {"x", "flat"}
    sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": case.data["x"][:2]})[0].shape == (2, 5)


def test_review_keeps_profile_and_overrides(tmp_path: Path) -> None:
    case = layernorm_decomposed(tmp_path)
    _, _, stats = _stats(case.path, case.data, tmp_path)
    r = Review(profile="trt", clip_outputs=True).with_choice("var", quantized=True)
    _, back = load_review(review_bytes(stats, r))
    assert back.profile == "trt" and back.clip_outputs and back.choice("var").quantized
    assert back.fingerprint() != Review().fingerprint()


# ---------------------------------------------------------------------------------------------
# Outputs: a logit KL clips, a sigmoid after it, and a one-value-per-sample output


def _logit_model(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """x[N,8] -> Gemm -> logit[N,1] -> Sigmoid -> p[N,1]; most logits small, a few large (KL clips them)."""
    rng = np.random.default_rng(0)
    w = np.full((1, 8), 0.5, np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["logit"], name="fc", transB=1),
            helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid"),
        ],
        "logit",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1]), helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w")],
    )
    x = (rng.standard_normal((400, 8)) * 0.1).astype(np.float32)
    x[::50] += 2.0  # one sample in 50: logit near 8, probability near 1
    return _save(g, folder, "logit"), {"x": x}


def test_output_feeders_take_minmax_and_clips_are_named(tmp_path: Path) -> None:
    path, data = _logit_model(tmp_path)
    model, _, stats = _stats(path, data, tmp_path)
    abs_max = float(np.abs(data["x"] @ np.full((8, 1), 0.5, np.float32)).max())
    clipped = calibrate_model(model, stats, "kl", clip_outputs=True)
    assert clipped.tensors["logit"].threshold < 0.5 * abs_max  # KL clips the rare large logits
    assert "logit" in clipped.settings["output_clip_warnings"]
    protected = calibrate_model(model, stats, "kl")
    e = protected.tensors["logit"]
    assert e.method == "minmax" and e.threshold == pytest.approx(abs_max, rel=1e-5)
    assert e.extra["output_minmax"]["was"] == "kl"
    assert protected.settings["output_clip_warnings"] == {}


def test_output_figures_judge_decisions_and_one_value_outputs(tmp_path: Path) -> None:
    path, data = _logit_model(tmp_path)
    model, source, stats = _stats(path, data, tmp_path)
    table = calibrate_model(model, stats, "kl", clip_outputs=True)
    report = analyze(model, table, source)
    by = {o.output: o for o in report.outputs}
    # independent reference: the float model and the QDQ model run by onnxruntime
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    f = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": data["x"]})
    q = ort.InferenceSession(build_qdq_model(model, table).SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": data["x"]}
    )
    p_f, p_q, l_f, l_q = f[0].ravel(), q[0].ravel(), f[1].ravel().astype(np.float64), q[1].ravel().astype(np.float64)
    d = by["p"].detail
    assert d is not None and d.kind == "probability"
    assert d.decision_agreement is not None
    assert d.decision_agreement == pytest.approx(np.mean((p_f >= 0.5) == (p_q >= 0.5)))
    assert d.decision_agreement < 0.99  # clipped logits flip the rare positive decisions
    assert by["p"].figures.cosine == 1.0 or by["p"].figures.cosine > d.decision_agreement  # cosine alone hides it
    dl = by["logit"].detail
    assert dl is not None and dl.kind == "one per sample"
    assert dl.saturated_share is not None
    assert dl.across_cosine == pytest.approx(l_f @ l_q / (np.linalg.norm(l_f) * np.linalg.norm(l_q)), rel=1e-9)
    assert dl.max_abs_error == pytest.approx(np.abs(l_f - l_q).max(), rel=1e-5)
    assert dl.mean_abs_error == pytest.approx(np.abs(l_f - l_q).mean(), rel=1e-5)
    s = table.tensors["logit"].scale
    assert dl.saturated_share == pytest.approx(np.mean((l_f < -128 * s) | (l_f > 127 * s)))
    assert dl.saturated_share > 0


def test_cli_profile_and_clip_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, data = _logit_model(tmp_path)
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(tmp_path / "d.npz", **data)  # type: ignore[arg-type]
    out = tmp_path / "t.json"
    assert main(["calibrate", str(path), "--data", str(tmp_path / "d.npz"), "--method", "kl", "--clip-outputs", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: 'logit' feeds graph output" in err
    assert main(["calibrate", str(path), "--data", str(tmp_path / "d.npz"), "--method", "kl", "--profile", "trt", "-o", str(out)]) == 0
    import json

    doc = json.loads(out.read_text())
    assert doc["settings"]["profile"] == "trt"
    assert doc["tensors"]["logit"]["float"] and "TensorRT" in doc["tensors"]["logit"]["extra"]["profile_float"]
    assert main(["calibrate", str(path), "--data", str(tmp_path / "d.npz"), "--method", "kl", "--profile", "tpu", "-o", str(out)]) == 2


def test_decomposed_softmax_and_sigmoid_insides_are_float() -> None:
    """x -> Exp -> ReduceSum -> Div (softmax) and x -> Neg -> Exp -> Add 1 -> Reciprocal (sigmoid), each
    followed by a MatMul: the insides stay float, the results are quantized where the MatMul reads them."""
    nodes = [
        helper.make_node("Exp", ["x"], ["e"], name="exp"),
        helper.make_node("ReduceSum", ["e", "ax"], ["s"], name="sum", keepdims=1),
        helper.make_node("Div", ["e", "s"], ["p"], name="div"),
        helper.make_node("MatMul", ["p", "w"], ["y"], name="mm1"),
        helper.make_node("Neg", ["x"], ["nx"], name="neg"),
        helper.make_node("Exp", ["nx"], ["en"], name="exp2"),
        helper.make_node("Add", ["en", "one"], ["d"], name="add1"),
        helper.make_node("Reciprocal", ["d"], ["sg"], name="rec"),
        helper.make_node("MatMul", ["sg", "w"], ["z"], name="mm2"),
    ]
    g = helper.make_graph(
        nodes,
        "decomposed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
            numpy_helper.from_array(np.array([-1], np.int64), "ax"),
            numpy_helper.from_array(np.array(1, np.float32), "one"),
        ],
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p = placement(proto, "ort")
    assert "Softmax" in p.float_tensors["e"] and "Softmax" in p.float_tensors["s"]
    assert all("Sigmoid" in p.float_tensors[t] for t in ("nx", "en", "d"))
    assert "add1" in p.float_nodes  # Add is in onnxruntime's list, but not inside a Sigmoid
    assert {"p", "sg", "y", "z"} <= p.quantized


def test_int8_layers_with_float_outputs_are_analysed(tmp_path: Path) -> None:
    """ncnn quantizes Conv and Gemm inputs and weights but writes their outputs in float: they are still
    layers of the analysis, and the first one's isolated and accumulated errors agree (both read the
    float input quantized once)."""
    case = batch_case("N")(tmp_path)
    model, source, stats = _stats(case.path, case.data, tmp_path)
    report = analyze(model, calibrate_model(model, stats, "kl", profile="ncnn"), source)
    by = {le.layer: le for le in report.layers}
    assert by["conv"].op_type == "Conv" and by["fc"].op_type == "Gemm"
    assert by["conv"].isolated.cosine == pytest.approx(by["conv"].accumulated.cosine, abs=1e-12)
    assert by["fc"].accumulated.cosine == pytest.approx(report.outputs[0].figures.cosine, abs=1e-12)  # fc writes y
    assert by["conv"].isolated.cosine < 1.0
