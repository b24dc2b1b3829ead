"""The format registry: every format writes and reads back through one interface, and detect_format
tells each written file's format from its content."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quantviz.errors import QuantvizError
from quantviz.export.qdq_model import build_available
from quantviz.export.registry import FORMATS, ExportOptions, detect_format, export_bytes, import_bytes, read_table, write_table
from quantviz.model import LoadedModel, load_model
from quantviz.table import CalibrationTable, TensorEntry

from .graphs import conv_bn_relu

# conv_bn_relu: x -> Conv "conv" -> bn -> relu -> add -> concat; only "x" feeds a Conv (ncnn keeps x only)
THRESHOLDS = {"x": 2.640625, "conv_out": 6.0, "relu_out": 1.0}
EXPECTED_NAMES = {"ncnn": {"x"}}
# how close each format brings T back: exact, float32, ncnn's %f (relative), T from a float32 scale
RTOL = {
    "json": 0.0,
    "csv": 0.0,
    "trt": 2e-7,
    "ort-json": 1e-7,
    "ort-flatbuffers": 1e-7,
    "ort-cache": 1e-7,
    "ncnn": 1e-6,
    "qdq": 2e-7,
}
TEXT_FORMATS = [f for f in FORMATS if f != "qdq"]


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(conv_bn_relu().SerializeToString(), name="conv_bn_relu.onnx")


def table() -> CalibrationTable:
    entries = {n: TensorEntry("kl", -t, t, t, float(np.float32(t) / np.float32(127)), 0) for n, t in THRESHOLDS.items()}
    return CalibrationTable("conv_bn_relu.onnx", "", {"symmetric": True}, entries)


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_every_format_round_trips_and_is_detected(fmt: str, model: LoadedModel, tmp_path: Path) -> None:
    opts = ExportOptions(model=model)
    data = export_bytes(table(), fmt, opts)
    assert detect_format(data, None) == fmt, "detected from content alone"
    path = write_table(table(), fmt, tmp_path, opts)  # a folder gets the default file name
    assert path.name == FORMATS[fmt].default_name and path.read_bytes() == data
    assert detect_format(path) == fmt
    back = read_table(path, options=opts)
    names = EXPECTED_NAMES.get(fmt, set(THRESHOLDS))
    assert set(back.tensors) == names
    for n in names:
        assert math.isclose(back.tensors[n].threshold, THRESHOLDS[n], rel_tol=RTOL[fmt], abs_tol=0.0)
    assert back.model_sha256 in ("", model.sha256)


@pytest.mark.skipif(not build_available(), reason="quantviz.qdq.build_qdq_model not written yet")
def test_qdq_round_trip(model: LoadedModel) -> None:
    # every activation needs a scale, or the builder keeps its node in float
    full = {**THRESHOLDS, "bn_out": 5.0, "add_out": 7.5, "out": 7.5}
    src = CalibrationTable(
        "m",
        "",
        {"symmetric": True},
        {n: TensorEntry("kl", -t, t, t, float(np.float32(t) / np.float32(127)), 0) for n, t in full.items()},
    )
    data = export_bytes(src, "qdq", ExportOptions(model=model))
    assert detect_format(data, "m.onnx") == "qdq" and detect_format(data, None) == "qdq"
    back = import_bytes(data, "qdq")
    assert {"x", "relu_out", "out"} <= set(back.tensors) <= set(full)
    for n, e in back.tensors.items():
        assert e.scale == src.tensors[n].scale, n  # exactly the table's float32 scale
        assert math.isclose(e.threshold, full[n], rel_tol=RTOL["qdq"])


def test_ncnn_vs_ort_cache_by_trailing_space_or_name() -> None:
    assert detect_format(b"conv1 42.717117 \n", None) == "ncnn"
    assert detect_format(b"conv1 42.717117\n", None) == "ort-cache"
    assert detect_format(b"conv1 42.717117\n", "model.table") == "ncnn"
    assert detect_format(b"#conv1 42.717117\n", None) == "ncnn"


def test_header_less_trt_and_broken_csv_go_to_their_readers_for_a_sentence() -> None:
    assert detect_format(b"input.1: 3caa54a9\n", None) == "trt"
    with pytest.raises(QuantvizError, match="Line 1"):
        import_bytes(b"input.1: 3caa54a9\n")
    assert detect_format(b"name;threshold\n", "t.csv") == "csv"
    with pytest.raises(QuantvizError, match="header row"):
        import_bytes(b"name;threshold\n", filename="t.csv")


@pytest.mark.parametrize(
    ("data", "match"), [(b"", "empty"), (b"just-one-token\n", "--format"), (b"\x00\x01\x02\x03" * 4, "binary")]
)
def test_unknown_content_asks_for_format(data: bytes, match: str) -> None:
    with pytest.raises(QuantvizError, match=match):
        detect_format(data, "x.bin")


def test_unknown_format_name() -> None:
    with pytest.raises(QuantvizError, match="Unknown table format 'onnx'"):
        export_bytes(table(), "onnx")


def test_missing_output_folder(tmp_path: Path) -> None:
    with pytest.raises(QuantvizError, match="does not exist"):
        write_table(table(), "csv", tmp_path / "no" / "t.csv")


def test_each_format_declares_whether_it_needs_the_model() -> None:
    by_tensor = CalibrationTable("m", "", {}, {"x": TensorEntry("kl", -1, 1, 1, 1 / 127, 0)})
    by_layer = CalibrationTable("m", "", {"ncnn_keys": "layer"}, {"conv_param_0": TensorEntry("ncnn", -1, 1, 1, 1 / 127, 0)})
    needs = {name: (f.needs_model(by_tensor), f.needs_model(by_layer)) for name, f in FORMATS.items()}
    assert needs.pop("qdq") == (True, True)  # the quantized model is built from the float one
    assert needs.pop("ncnn") == (True, False)  # tensor names become ncnn layer names through the model
    assert set(needs.values()) == {(False, False)}
    assert all(f.detect for f in FORMATS.values())  # every format can be recognised


def test_cli_export_refuses_a_model_format_without_the_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    from quantviz.export.qv_json import write_json
    from tests.conftest import ROOT

    src = tmp_path / "t.json"
    write_json(CalibrationTable("m", "", {}, {"x": TensorEntry("kl", -1, 1, 1, 1 / 127, 0)}), src)
    for fmt in ("qdq", "ncnn"):
        r = subprocess.run(
            [sys.executable, "-m", "quantviz", "export", str(src), "--format", fmt, "-o", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2 and f"--format {fmt} needs the model" in r.stderr, r.stderr
