"""AppTest of bad input the app must answer with one sentence, keeping what the person did before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper
from streamlit.testing.v1 import AppTest

from quantviz.review import Review, review_bytes
from tests.app.figs import review_of, set_review_of, stats_of
from tests.graphs import IR_VERSION, OPSET

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    return at


def _custom_op_model() -> bytes:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("FancyGelu", ["x"], ["y"], name="fancy", domain="com.example")], "g", vi[:1], vi[1:])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)], ir_version=IR_VERSION
    )
    return bytes(model.SerializeToString())


def test_model_onnxruntime_cannot_run_keeps_the_statistics_and_the_choices() -> None:
    at = _app()
    tensors_before = {m.label: m.value for m in at.metric}["Tensors"]
    set_review_of(at, Review().with_choice("/Relu_output_0", note="keep me"))
    at.radio(key="model_source").set_value("Upload a model").run()
    at.file_uploader(key="model_upload").upload("custom.onnx", _custom_op_model(), "application/octet-stream").run()
    assert not at.exception
    assert len(at.error) == 1
    msg = at.error[0].value
    assert "FancyGelu" in msg and "com.example" in msg and msg.count(". ") <= 1 and "Traceback" not in msg
    assert {m.label: m.value for m in at.metric}["Tensors"] == tensors_before
    assert review_of(at).choice("/Relu_output_0").note == "keep me"


def test_corrupt_review_file_keeps_the_review_then_a_good_one_reopens_notes() -> None:
    at = _app()
    set_review_of(at, Review().with_choice("/Relu_output_0", note="mine"))
    at.file_uploader(key="stats_upload").upload("review.npz", b"PK\x03\x04 not really a zip", "application/octet-stream").run()
    assert not at.exception
    assert len(at.error) == 1 and "Traceback" not in at.error[0].value
    assert review_of(at).choice("/Relu_output_0").note == "mine"  # nothing lost
    # a good review file (statistics of the sample + a note and an override) reopens both

    stats = stats_of(at)
    review = Review().with_choice("/Concat_output_0", note="check the branch scales", override=2.5)
    raw = review_bytes(stats, review)
    at.file_uploader(key="stats_upload").upload("good_review.npz", raw, "application/octet-stream").run()
    assert not at.exception and not at.error
    got = review_of(at)
    assert got.choice("/Concat_output_0").note == "check the branch scales" and got.choice("/Concat_output_0").override == 2.5
    # the analysis page needs the model and the data: the file alone brings the statistics, and the
    # sample model is still loaded here, so the page runs; its layer note shows the reopened note
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception and not at.error
    at.selectbox(key="sens_layer").set_value("/Concat").run()
    assert at.text_area(key="sens_note::/Concat_output_0").value == "check the branch scales"
    override = at.number_input(key="sens_override::/Concat_output_0").value
    assert override is not None and np.isclose(override, 2.5)
