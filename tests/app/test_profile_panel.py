"""The "Engine profile" expander (issue 8 item 2): choosing a profile changes the review and the table,
the tensors it keeps in float are listed with the reason, and a tensor can be quantized anyway."""

from __future__ import annotations

from pathlib import Path

import onnx
from streamlit.testing.v1 import AppTest

from tests.app.figs import review_of, work_of

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MODEL = ROOT / "sample_models" / "digits_cnn.onnx"


def test_profile_choice_lists_float_tensors_and_allows_override() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception
    assert review_of(at).profile == "ort"
    at.selectbox(key="sens_profile").set_value("ncnn").run()
    assert not at.exception and review_of(at).profile == "ncnn"
    listed = next(d.value for d in at.dataframe if list(d.value.columns) == ["tensor", "why"])
    kept = list(listed["tensor"])
    # independent check on the graph: ncnn quantizes the inputs of Conv and of Gemm/MatMul with a
    # constant weight, so no tensor such a node reads may be listed; the reasons name the engine
    proto = onnx.load(str(SAMPLE_MODEL))
    inits = {i.name for i in proto.graph.initializer}
    read_int8 = {n.input[0] for n in proto.graph.node if n.op_type == "Conv" or (n.op_type in ("Gemm", "MatMul") and n.input[1] in inits)}
    assert kept and not (set(kept) & read_int8)
    assert all("ncnn" in why or "float" in why for why in listed["why"])
    target = kept[0]
    at.multiselect(key="sens_forced").set_value([target]).run()
    assert not at.exception
    assert review_of(at).choice(target).quantized
    assert work_of(at) is not None


def test_bias_overflow_is_shown_on_export(tmp_path: Path) -> None:
    import io

    import numpy as np

    from tests.test_bias_overflow import _model

    path, data, _, _ = _model(tmp_path)
    buf = io.BytesIO()
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(buf, **data)  # type: ignore[arg-type]
    from ui.state import DATA_SOURCES

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.radio(key="model_source").set_value("Upload a model").run()
    at.file_uploader(key="model_upload").upload("bias.onnx", path.read_bytes(), "application/octet-stream").run()
    at.radio(key="data_source").set_value(DATA_SOURCES[1]).run()
    at.file_uploader(key="data_upload").upload("d.npz", buf.getvalue(), "application/octet-stream").run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("pages/4_Export.py").run()
    assert not at.exception
    assert any("The int32 bias 'b' of layer 'fc' overflows" in w.value for w in at.warning)
