"""AppTest of the home page and the distributions page (no browser)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from streamlit.testing.v1 import AppTest

from tests.app.figs import array, figure, work_of

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
SAMPLE_MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
SAMPLE_DATA = ROOT / "sample_models" / "digits_calib.npz"


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    assert not at.exception
    return at


def _float_absmax(model_path: Path, data: np.ndarray, tensor: str) -> float:
    """Abs-max of one tensor from a plain onnxruntime session (independent of quantviz)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(model_path))
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run([tensor], {sess.get_inputs()[0].name: data})[0]
    return float(np.abs(out).max())


def test_first_screen_shows_the_sample_without_any_click() -> None:
    at = _app()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Samples"] == "256"
    n_tensors = int(metrics["Tensors"])
    assert n_tensors >= 20
    assert not at.error


def test_distributions_page_draws_histogram_with_clip_lines() -> None:
    at = _app()
    at.switch_page("pages/1_Distributions.py").run()
    assert not at.exception
    names = at.selectbox(key="dist_tensor").options
    relu = next(n for n in names if "Relu" in n or "relu" in n)
    at.selectbox(key="dist_tensor").set_value(relu.split("  ·  ")[0]).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    at.toggle(key="dist_log2").set_value(True).run()
    log2 = figure(at.get("plotly_chart")[1])
    assert [tr["name"].split(" ")[0] for tr in log2["data"]] == ["linear", "log2"]
    hist = json.loads(charts[0].proto.spec)
    assert hist["data"][0]["type"] == "bar"
    texts = [a["text"] for a in hist["layout"]["annotations"]]
    assert any(t.startswith("MinMax") for t in texts) and any(t.startswith("KL") for t in texts)
    # The MinMax line sits at the tensor's abs-max, computed here with plain onnxruntime.
    tensor = relu.split("  ·  ")[0]
    data = np.load(SAMPLE_DATA)["input"]
    expected = _float_absmax(SAMPLE_MODEL, data, tensor)
    xs = [s["x0"] for s in hist["layout"]["shapes"] if s["type"] == "line"]
    assert any(abs(x - expected) <= 1e-6 * max(1.0, expected) for x in xs)


def test_table_download_holds_every_tensor() -> None:
    at = _app()
    at.switch_page("pages/1_Distributions.py").run()
    assert not at.exception
    at.selectbox(key="table_method").set_value("minmax").run()
    btn = at.get("download_button")
    assert btn, "no download button"


def test_upload_model_and_npz_then_collect() -> None:
    at = _app()
    at.radio(key="model_source").set_value("Upload a model").run()
    at.file_uploader(key="model_upload").upload("digits_cnn.onnx", SAMPLE_MODEL.read_bytes(), "application/octet-stream").run()
    assert not at.exception and not at.error
    at.file_uploader(key="data_upload").upload("calib.npz", SAMPLE_DATA.read_bytes(), "application/octet-stream").run()
    at.number_input(key="collect_samples").set_value(32).run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Samples"] == "32"


def test_bad_model_upload_gives_one_sentence_and_keeps_the_page() -> None:
    at = _app()
    at.radio(key="model_source").set_value("Upload a model").run()
    at.file_uploader(key="model_upload").upload("broken.onnx", b"this is not a model", "application/octet-stream").run()
    assert not at.exception
    assert len(at.error) == 1
    assert "not a readable ONNX model" in at.error[0].value
    # the statistics collected before are still shown
    assert {m.label for m in at.metric} >= {"Tensors", "Samples"}


def test_npz_that_does_not_fit_the_model_names_the_input() -> None:
    at = _app()
    import io

    buf = io.BytesIO()
    np.savez(buf, input=np.zeros((4, 1, 9, 9), np.float32))
    at.radio(key="data_source").set_value("Upload .npz / .npy").run()
    at.file_uploader(key="data_upload").upload("bad.npz", buf.getvalue(), "application/octet-stream").run()
    assert not at.exception
    assert len(at.error) == 1
    assert "'input'" in at.error[0].value and "[?, 1, 8, 8]" in at.error[0].value.replace("batch", "?")


def test_weights_of_a_conv_are_shown_per_channel_after_folding() -> None:
    """The Conv feeding a BatchNorm: its folded per-channel abs-max, checked against numpy."""
    import onnx
    from onnx import numpy_helper

    at = _app()
    m = onnx.load(str(SAMPLE_MODEL))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    conv = next(n for n in m.graph.node if n.output[0] == bn.input[0])
    w = inits[conv.input[1]].astype(np.float64)
    gamma, _, _, var = (inits[n].astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    folded = w * (gamma / np.sqrt(var + eps))[:, None, None, None]
    expected = np.abs(folded).reshape(folded.shape[0], -1).max(axis=1)
    work_of(at).tensor = bn.output[0]
    at.switch_page("pages/1_Distributions.py").run()
    assert not at.exception
    charts = [figure(c) for c in at.get("plotly_chart")]
    weights = [c for c in charts if c["layout"]["xaxis"]["title"]["text"] == "output channel"]
    assert len(weights) == 1
    got = array(weights[0]["data"][0]["y"])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(array(weights[0]["data"][1]["y"]), (expected / 127).astype(np.float32), rtol=1e-6)


def test_an_already_quantized_model_is_named_as_such_and_cannot_run(tmp_path: Path) -> None:
    from tests.corpus import already_quantized

    at = _app()
    at.radio(key="model_source").set_value("Upload a model").run()
    raw = already_quantized(tmp_path).read_bytes()
    at.file_uploader(key="model_upload").upload("dyn_int8.onnx", raw, "application/octet-stream").run()
    assert not at.exception
    assert len(at.error) == 1 and "already quantized" in at.error[0].value and "MatMulInteger" in at.error[0].value
    assert at.button(key="run").disabled
    # the statistics collected before are still shown
    assert {m.label for m in at.metric} >= {"Tensors", "Samples"}
