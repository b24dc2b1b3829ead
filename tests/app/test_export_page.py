"""AppTest of the Export page: every format downloads and reads back to the app's table."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from streamlit.testing.v1 import AppTest

from quantviz.model import LoadedModel
from quantviz.table import CalibrationTable
from tests.app.figs import review_of, set_review_of, stats_of, stored_in, work_of

ROOT = Path(__file__).resolve().parents[2]


def _export_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    at.switch_page("pages/4_Export.py").run()
    assert not at.exception
    return at


def test_every_cheap_format_and_the_review_are_offered_and_the_trt_header_is_checked() -> None:
    at = _export_page()
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download calibration.cache" in labels and "Download calibration_table.json" in labels
    assert "Download review.npz" in labels
    # the TensorRT header is the user's choice, and a bad one gets a sentence
    at.text_input(key="trt_header").set_value("not a header").run()
    assert not at.exception
    assert len(at.error) == 1 and "TRT-" in at.error[0].value
    at.text_input(key="trt_header").set_value("TRT-100300-MinMaxCalibration").run()
    assert not at.error


def test_qdq_model_is_built_on_request() -> None:
    at = _export_page()
    assert "Download model_qdq.onnx" not in [b.proto.label for b in at.get("download_button")]
    at.button(key="prepare_qdq").click().run()
    assert not at.exception and not at.error
    assert "Download model_qdq.onnx" in [b.proto.label for b in at.get("download_button")]


def test_import_and_adopt_overrides() -> None:
    at = _export_page()
    table = "TRT-8601-EntropyCalibration2\n/Relu_output_0: " + struct.pack(">f", np.float32(1.0) / np.float32(127)).hex() + "\n"
    at.file_uploader(key="import_table").upload("other.cache", table.encode(), "text/plain").run()
    assert not at.exception and not at.error
    at.button(key="adopt_import").click().run()
    review = review_of(at)
    assert review.choice("/Relu_output_0").override == float(np.float32(1.0) / np.float32(127)) * 127


def _weight_scales(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Scales of the DequantizeLinear nodes that read an integer weight initializer."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {
        n.input[0]: inits[n.input[1]]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
    }


def test_qdq_seven_bit_weights_checkbox(monkeypatch: pytest.MonkeyPatch) -> None:
    import quantviz.qdq as qdq

    built: list[tuple[bool, onnx.ModelProto]] = []
    original = qdq.build_qdq_model

    def recording_build(model: LoadedModel, table: CalibrationTable, **kwargs: Any) -> onnx.ModelProto:
        proto = original(model, table, **kwargs)
        built.append((kwargs.get("reduce_range", False), proto))
        return proto

    monkeypatch.setattr(qdq, "build_qdq_model", recording_build)

    monkeypatch.setattr(qdq, "int8_kernels_saturate", lambda: True)
    at = _export_page()
    box = at.checkbox(key="qdq_reduce_range")
    assert box.label == "7-bit weights (reduce range)" and box.value is False
    # on an AVX2-without-VNNI CPU the page recommends the option, in one sentence
    assert len(at.info) == 1 and "7-bit weights" in at.info[0].value and "VNNI" in at.info[0].value
    at.button(key="prepare_qdq").click().run()
    assert not at.exception and not at.error
    assert built and built[-1][0] is False
    eight = _weight_scales(built[-1][1])
    at.checkbox(key="qdq_reduce_range").check().run()
    assert not at.exception and not at.error
    assert built[-1][0] is True
    seven = _weight_scales(built[-1][1])
    # 7-bit weights: every weight scale is the 8-bit one times 127/63 (levels -63..63 instead of -127..127)
    assert eight and seven.keys() == eight.keys()
    for name, s8 in eight.items():
        np.testing.assert_allclose(seven[name], s8 * np.float32(127) / np.float32(63), rtol=1e-6, err_msg=name)

    # elsewhere (VNNI, ARM) no recommendation is shown
    monkeypatch.setattr(qdq, "int8_kernels_saturate", lambda: False)
    at.run()
    assert not at.exception and not at.info


def test_html_report_of_the_current_table() -> None:
    """The report offered on Export is the analysis of the table the page exports (its scales)."""
    at = _export_page()
    labels = [b.proto.label for b in at.get("download_button")]
    if "Download quantviz_report.html" not in labels:
        at.button(key="export_analyse").click().run()
        assert not at.exception and not at.error
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download quantviz_report.html" in labels and "Download LAYERS.csv" in labels
    from quantviz.review import build_table

    report = stored_in(at, work_of(at).last_analysis)
    stats = stats_of(at)
    table = build_table(stats, review_of(at))
    for name, (t, _, _) in report.thresholds.items():
        e = table.tensors[name]
        # a tensor feeding a graph output takes MinMax where the method clips it (quantviz.outputs)
        assert e.observed_min is not None and e.observed_max is not None, name
        minmax = max(abs(e.observed_min), abs(e.observed_max))
        assert (
            t == e.threshold or e.scale_from or name.endswith("BatchNormalization_output_0")
            or (e.threshold < minmax and t == pytest.approx(minmax, rel=1e-6))
        ), name  # fmt: skip
    # a new typed threshold makes that report stale: it is no longer offered
    set_review_of(at, review_of(at).with_choice("/Relu_output_0", override=1.0))
    at.run()
    assert "Download quantviz_report.html" not in [b.proto.label for b in at.get("download_button")]
