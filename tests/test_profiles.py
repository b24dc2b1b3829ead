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
from quantviz.outputs import output_feeders
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
        helper.make_node("Expand", ["s", "shape"], ["sb"], name="broadcast"),  # as jax2tf exports it
        helper.make_node("Div", ["e", "sb"], ["p"], name="div"),
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
            numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
            numpy_helper.from_array(np.array(1, np.float32), "one"),
        ],
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p = placement(proto, "ort")
    assert all("Softmax" in p.float_tensors[t] for t in ("e", "s", "sb"))
    assert all("Sigmoid" in p.float_tensors[t] for t in ("nx", "en", "d"))
    assert "add1" in p.float_nodes  # Add is in onnxruntime's list, but not inside a Sigmoid
    assert {"p", "sg", "y", "z"} <= p.quantized
    # a decomposed Softmax that writes a graph output: its logits are output feeders (MinMax unless clipped on request)
    probs = helper.make_graph(
        nodes[:4], "softmax_out", list(g.input), [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 4])], list(g.initializer)
    )
    assert output_feeders(helper.make_model(probs, opset_imports=[helper.make_opsetid("", 17)])) == {"p": "p", "x": "p"}


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


def _head_model(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A detection head: x[N,8] -> Gemm -> Sigmoid -> scores[N,4] and x -> Gemm -> Mul 100 -> boxes[N,4],
    joined by Concat into the one graph output det[N,8] (YOLO's output0). Most scores are small, a few
    near 1 (KL clips them); the boxes reach hundreds."""
    rng = np.random.default_rng(3)
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "ws"], ["logit"], name="cls", transB=1),
            helper.make_node("Sigmoid", ["logit"], ["scores"], name="sigmoid"),
            helper.make_node("Gemm", ["x", "wb"], ["raw"], name="reg", transB=1),
            helper.make_node("Mul", ["raw", "stride"], ["boxes"], name="scale_boxes"),
            helper.make_node("Concat", ["boxes", "scores"], ["det"], name="join", axis=1),
        ],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("det", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(np.full((4, 8), 0.5, np.float32), "ws"),
            numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "wb"),
            numpy_helper.from_array(np.array(100.0, np.float32), "stride"),
        ],
    )
    x = (rng.standard_normal((400, 8)) * 0.1 - 0.6).astype(np.float32)  # logits near -2.4: scores near 0.08
    x[::50] += 1.2  # one sample in 50: logit near +2.4, score near 0.92
    return _save(g, folder, "head"), {"x": x}


def test_detection_head_join_stays_float_and_scores_keep_their_range(tmp_path: Path) -> None:
    path, data = _head_model(tmp_path)
    proto = onnx.load(str(path))
    for key in PROFILES:  # under every profile: the join is float, its node runs in float
        p = placement(proto, key)
        assert "det" in p.float_tensors and "joins probabilities ('scores')" in p.float_tensors["det"], key
        assert "join" in p.float_nodes
    assert {"scores", "boxes", "logit"} <= placement(proto, "ort").quantized
    model, source, stats = _stats(path, data, tmp_path)
    table = calibrate_model(model, stats, "kl")
    # independent reference: the scores in numpy
    scores = 1 / (1 + np.exp(-(data["x"].astype(np.float64) @ np.full((8, 4), 0.5))))
    e = table.tensors["scores"]
    assert e.extra["output_minmax"]["was"] == "kl" and e.extra["output_minmax"]["threshold"] < 0.5 * scores.max()  # KL would clip
    assert e.threshold == pytest.approx(scores.max(), rel=1e-5)
    assert table.tensors["det"].float_kept
    # one int8 scale for det (set by the boxes) would round every score to zero: what the rule avoids
    det_f = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, data)[0]
    assert np.all(np.round(scores / (np.abs(det_f).max() / 127)) == 0)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    qdq = build_qdq_model(model, table)
    assert "det" not in _quantized_tensors(qdq) and "scores" in _quantized_tensors(qdq)
    det_q = ort.InferenceSession(qdq.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, data)[0]
    assert np.mean((det_q[:, 4:] >= 0.5) == (scores >= 0.5)) == 1.0  # the rare confident scores survive
    assert np.abs(det_q[:, 4:] - scores).max() < 0.05


def test_graph_inputs_take_minmax_unless_the_clip_is_allowed(tmp_path: Path) -> None:
    """The head's input x: most values near -0.6, one sample in 50 near +0.6; KL clips it (the rare
    samples carry the confident scores), so x takes its observed range, as outputs do."""
    path, data = _head_model(tmp_path)
    model, _, stats = _stats(path, data, tmp_path)
    x = data["x"].astype(np.float64)
    clipped = calibrate_model(model, stats, "kl", clip_outputs=True)
    assert clipped.tensors["x"].threshold < 0.9 * np.abs(x).max()
    assert "'x' is a graph input and is clipped" in clipped.settings["output_clip_warnings"]["x"]
    e = calibrate_model(model, stats, "kl").tensors["x"]
    assert e.method == "minmax" and e.threshold == pytest.approx(np.abs(x).max(), rel=1e-6)
    assert e.extra["output_minmax"] == {"was": "kl", "threshold": clipped.tensors["x"].threshold, "input": "x"}


def _gelu_model(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """x -> MatMul -> h; the tanh-form GELU of h (jax2tf's order: c * h, h * ., h * ., h + ., * sqrt(2/pi),
    Tanh, 1 + ., 0.5 * ., h * .) -> MatMul -> y; the erf-form GELU of h (PyTorch's: h / sqrt 2, Erf, + 1,
    h * ., * 0.5) -> MatMul -> z."""

    def c(v: float, n: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(v, np.float32), n)

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Mul", ["k", "h"], ["t1"], name="t_mul"),
        helper.make_node("Mul", ["h", "t1"], ["t2"], name="t_mul1"),
        helper.make_node("Mul", ["h", "t2"], ["t3"], name="t_mul2"),
        helper.make_node("Add", ["h", "t3"], ["t4"], name="t_add"),
        helper.make_node("Mul", ["s2pi", "t4"], ["t5"], name="t_mul3"),
        helper.make_node("Tanh", ["t5"], ["t6"], name="t_tanh"),
        helper.make_node("Add", ["one", "t6"], ["t7"], name="t_add1"),
        helper.make_node("Mul", ["half", "t7"], ["t8"], name="t_mul4"),
        helper.make_node("Mul", ["h", "t8"], ["g_tanh"], name="t_mul5"),
        helper.make_node("MatMul", ["g_tanh", "w"], ["y"], name="fc_y"),
        helper.make_node("Div", ["h", "sqrt2"], ["e1"], name="e_div"),
        helper.make_node("Erf", ["e1"], ["e2"], name="e_erf"),
        helper.make_node("Add", ["e2", "one"], ["e3"], name="e_add"),
        helper.make_node("Mul", ["h", "e3"], ["e4"], name="e_mul"),
        helper.make_node("Mul", ["e4", "half"], ["g_erf"], name="e_mul1"),
        helper.make_node("MatMul", ["g_erf", "w"], ["z"], name="fc_z"),
    ]
    g = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8]), helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(np.random.default_rng(5).standard_normal((8, 8)).astype(np.float32), "w"),
            c(0.044715, "k"), c(np.sqrt(2 / np.pi), "s2pi"), c(1.0, "one"), c(0.5, "half"), c(np.sqrt(2.0), "sqrt2"),
        ],
    )  # fmt: skip
    return _save(g, folder, "gelu"), {"x": np.random.default_rng(6).standard_normal((64, 8)).astype(np.float32)}


def test_decomposed_gelu_insides_are_float(tmp_path: Path) -> None:
    path, data = _gelu_model(tmp_path)
    proto = onnx.load(str(path))
    inside = {"t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "e1", "e2", "e3", "e4"}
    for key in PROFILES:
        p = placement(proto, key)
        assert inside <= set(p.float_tensors), key
        assert all("GELU" in p.float_tensors[t] for t in inside)
        assert {"t_tanh", "t_mul5", "e_erf", "e_mul1"} <= set(p.float_nodes)
    assert {"h", "g_tanh", "g_erf", "y", "z"} <= placement(proto, "ort").quantized
    model, _, stats = _stats(path, data, tmp_path)
    table = calibrate_model(model, stats, "minmax")
    assert all(table.tensors[t].float_kept for t in inside)
    q = _quantized_tensors(build_qdq_model(model, table))
    assert not (q & inside) and {"h", "g_tanh", "g_erf"} <= q


def test_flax_layernorm_insides_are_float(tmp_path: Path) -> None:
    """jax2tf's LayerNorm: mean = Sum(x) * 1/n, var = max(Sum(x * x) * 1/n - mean^2, 0), Sqrt then
    Reciprocal, gamma folded into the rsqrt, (x - mean) * that + beta, then a MatMul."""

    def c(v: float | np.ndarray, n: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(v, np.float32), n)

    nodes = [
        helper.make_node("ReduceSum", ["x", "ax"], ["s1"], name="sum", keepdims=1),
        helper.make_node("Mul", ["s1", "inv_n"], ["mean"], name="mean"),
        helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
        helper.make_node("ReduceSum", ["sq", "ax"], ["s2"], name="sum2", keepdims=1),
        helper.make_node("Mul", ["s2", "inv_n"], ["m2"], name="mean2"),
        helper.make_node("Mul", ["mean", "mean"], ["msq"], name="square_mean"),
        helper.make_node("Sub", ["m2", "msq"], ["v0"], name="var"),
        helper.make_node("Max", ["zero", "v0"], ["v"], name="maximum"),
        helper.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Reciprocal", ["sd"], ["rs"], name="rsqrt"),
        helper.make_node("Mul", ["rs", "gamma"], ["rg"], name="gamma"),
        helper.make_node("Sub", ["x", "mean"], ["d"], name="centre"),
        helper.make_node("Mul", ["d", "rg"], ["n"], name="normalise"),
        helper.make_node("Add", ["n", "beta"], ["ln"], name="beta"),
        helper.make_node("MatMul", ["ln", "w"], ["y"], name="fc"),
    ]
    g = helper.make_graph(
        nodes,
        "flax_ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(np.array([-1], np.int64), "ax"), c(1 / 8, "inv_n"), c(0.0, "zero"), c(1e-6, "eps"),
            c(np.linspace(0.5, 1.5, 8), "gamma"), c(np.linspace(-0.1, 0.1, 8), "beta"), c(np.eye(8), "w"),
        ],
    )  # fmt: skip
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    inside = {"s1", "mean", "sq", "s2", "m2", "msq", "v0", "v", "ve", "sd", "rs", "rg", "d", "n"}
    for key in PROFILES:
        p = placement(proto, key)
        assert inside <= set(p.float_tensors) and all("LayerNorm" in p.float_tensors[t] for t in inside), key
        assert {"sum", "sqrt", "centre", "beta"} <= set(p.float_nodes)
    assert {"ln", "y"} <= placement(proto, "ort").quantized
