"""AppTest of the session's state bound to its model (issue 9): sample -> second model -> Home -> back.

The second model is made here (tests/graphs.conv_bn_relu, synthetic data); every expected name and
number comes from onnx / onnxruntime / numpy directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from streamlit.testing.v1 import AppTest

from quantviz.review import Review
from tests.app.figs import review_of, session_of, set_review_of, work_of
from tests.graphs import conv_bn_relu

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
SAMPLE_DATA = ROOT / "sample_models" / "digits_calib.npz"
SAMPLE_TENSOR = "/Relu_output_0"


def _node_outputs(proto: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits] + [o for n in proto.graph.node for o in n.output]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _texts(at: AppTest) -> str:
    return "\n".join(e.value for kind in (at.markdown, at.caption, at.info, at.warning, at.success) for e in kind)


def _second_model(at: AppTest) -> onnx.ModelProto:
    proto = conv_bn_relu(seed=3)
    at.radio(key="model_source").set_value("Upload a model").run()
    at.file_uploader(key="model_upload").upload("second.onnx", proto.SerializeToString(), "application/octet-stream").run()
    at.radio(key="data_source").set_value("Synthetic (random)").run()
    at.number_input(key="synthetic_n").set_value(16).run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return proto


def test_sample_then_second_model_then_home_then_back() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception
    sample_tensors = int(_metrics(at)["Tensors"])
    set_review_of(at, Review().with_choice(SAMPLE_TENSOR, note="sample note", method="minmax"))

    proto = _second_model(at)
    names = _node_outputs(proto)
    assert _metrics(at)["Tensors"] == str(len(names)) and len(names) != sample_tensors
    said = _texts(at)
    assert "The review of digits_cnn.onnx (1 choice, 1 note) is kept" in said
    assert review_of(at).choices == {}  # the second model starts with its own, empty review

    # every page shows the second model only
    at.switch_page("pages/1_Distributions.py").run()
    assert not at.exception
    assert {o.split("  ·  ")[0] for o in at.selectbox(key="dist_tensor").options} <= set(names)
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    layers = [o.split("  ·  ")[0] for o in at.selectbox(key="sens_layer").options]
    assert layers and set(layers) <= {n.name for n in proto.graph.node}
    texts = _texts(at)
    assert "digits_eval.npz" not in texts and "digits_calib" not in texts
    assert not any("older" in w.value for w in at.warning)
    at.switch_page("pages/4_Export.py").run()
    assert not at.exception
    assert _metrics(at)["Per-tensor choices"] == "0"

    # Home again: nothing reset, nothing collected again
    at.switch_page("pages/0_Home.py").run()
    assert not at.exception
    assert at.radio(key="model_source").value == "Upload a model"
    assert at.radio(key="data_source").value == "Synthetic (random)"
    assert _metrics(at)["Tensors"] == str(len(names))

    # back to the sample: its review comes back, and says so
    at.radio(key="model_source").set_value("Bundled sample").run()
    assert _metrics(at)["Tensors"] == str(len(names))  # only Run switches
    at.radio(key="data_source").set_value("Sample calibration set").run()  # a sample pick runs by itself
    assert not at.exception
    assert _metrics(at)["Tensors"] == str(sample_tensors)
    assert "Its own review (1 choice, 1 note) is back" in _texts(at)
    assert review_of(at).choice(SAMPLE_TENSOR).note == "sample note"
    at.switch_page("pages/4_Export.py").run()
    assert _metrics(at)["Per-tensor choices"] == "1"
    # the second model's review is still kept in the session, apart
    assert len(session_of(at).works) == 2


def test_distributions_toggles_survive_a_page_switch() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/1_Distributions.py").run()
    at.toggle(key="dist_log").set_value(False).run()
    at.toggle(key="dist_signed").set_value(False).run()
    at.switch_page("pages/0_Home.py").run()
    at.radio(key="model_source").set_value("Upload a model").run()
    at.switch_page("pages/1_Distributions.py").run()
    assert at.toggle(key="dist_log").value is False and at.toggle(key="dist_signed").value is False
    at.switch_page("pages/0_Home.py").run()
    assert at.radio(key="model_source").value == "Upload a model"


def _absmax(tensor: str) -> float:
    """Abs-max of one tensor of the sample on its calibration set, from a plain onnxruntime session."""
    m = onnx.load(str(SAMPLE_MODEL))
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(SAMPLE_DATA)["input"]
    return float(np.abs(sess.run([tensor], {"input": x})[0]).max())


def test_kept_float_layer_stays_listed_and_can_be_unticked_and_stale_values_are_never_written() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception
    layer, out = "/fc/Gemm", "/fc/Gemm_output_0"
    at.selectbox(key="sens_layer").set_value(layer).run()
    # a typed threshold never used, then another method: the box shows that method's threshold
    typed = at.number_input(key=f"sens_override::{out}").value
    assert typed is not None
    stale = typed / 3
    at.number_input(key=f"sens_override::{out}").set_value(stale).run()
    at.selectbox(key=f"sens_method::{out}").set_value("minmax").run()
    assert not at.exception
    expected = _absmax(out)
    shown = at.number_input(key=f"sens_override::{out}").value
    assert shown is not None and abs(shown - expected) <= 1e-5 * expected, (shown, expected, stale)
    at.button(key="sens_use").click().run()
    assert abs(review_of(at).choice(out).override - expected) <= 1e-5 * expected

    # keep in float: the layer stays listed (no figures), and unticking it undoes the choice
    at.checkbox(key=f"sens_float::{out}").check().run()
    assert not at.exception
    assert review_of(at).choice(out).float_kept
    options = [o.split("  ·  ")[0] for o in at.selectbox(key="sens_layer").options]
    assert layer in options
    assert at.selectbox(key="sens_layer").value == layer
    assert any("kept in float" in c.value for c in at.caption)
    at.checkbox(key=f"sens_float::{out}").uncheck().run()
    assert not at.exception
    assert not review_of(at).choice(out).float_kept
    assert work_of(at).layer == layer


def test_choices_overview_removes_a_choice() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    r = Review().with_choice(SAMPLE_TENSOR, note="n1").with_choice("/Concat_output_0", override=2.0)
    set_review_of(at, r)
    at.switch_page("pages/4_Export.py").run()
    assert not at.exception
    assert at.button(key="choices_remove").disabled  # nothing selected yet
    at.button(key="choices_clear").click().run()
    assert not at.exception
    assert review_of(at).choices == {}
    assert any("Every choice removed (2)" in s.value for s in at.success)
