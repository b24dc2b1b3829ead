"""All-zero tensors (threshold 0) get one treatment in every format: kept in float (quantviz.table).

The model: x[B,4] -> fc1 -> h; x -> fz (all-zero weights and bias) -> z, all zero; z -> fc3 -> g;
h + g -> fc2 -> y. Every method gives 'z' threshold 0; each format must say "float" for it its own way,
and reading it back must never give it a range (a TensorRT cache once brought it back as T = 127).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.calib import METHODS, MethodConfig
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.export.registry import ExportOptions, export_bytes, import_bytes
from quantviz.model import LoadedModel, load_model
from quantviz.review import Choice, Review, build_table
from quantviz.stats import CalibrationStats
from quantviz.table import ZERO_TENSOR_NOTE, CalibrationTable, TensorEntry, calibrate, calibrate_model

ZERO = "z"
Setup = tuple[LoadedModel, CalibrationStats, CalibrationTable]  # the model, its statistics and KL table


def _zero_model(folder: Path) -> Path:
    rng = np.random.default_rng(0)

    def w(*s: int) -> np.ndarray:
        return (rng.standard_normal(s) * 0.5).astype(np.float32)

    inits = [
        numpy_helper.from_array(w(4, 4), "w1"), numpy_helper.from_array(w(4), "b1"),
        numpy_helper.from_array(np.zeros((4, 4), np.float32), "wz"), numpy_helper.from_array(np.zeros(4, np.float32), "bz"),
        numpy_helper.from_array(w(4, 4), "w3"), numpy_helper.from_array(w(4), "b3"),
        numpy_helper.from_array(w(3, 4), "w2"), numpy_helper.from_array(w(3), "b2"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Gemm", ["x", "wz", "bz"], [ZERO], name="fz", transB=1),
        helper.make_node("Gemm", [ZERO, "w3", "b3"], ["g"], name="fc3", transB=1),
        helper.make_node("Add", ["h", "g"], ["s"], name="add"),
        helper.make_node("Gemm", ["s", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "zero", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = folder / "zero.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    folder = tmp_path_factory.mktemp("zero")
    model = load_model(_zero_model(folder))
    np.savez(folder / "d.npz", x=np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32))
    stats = collect(model, open_source(folder / "d.npz", model.inputs), CollectConfig(batch_size=4))
    assert stats.tensors[ZERO].min == 0 and stats.tensors[ZERO].max == 0  # the premise: 'z' is all zero
    return model, stats, calibrate_model(model, stats, "kl")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_keeps_the_zero_tensor_in_float(setup: Setup, name: str) -> None:
    _, stats, _ = setup
    for symmetric in (True, False):
        table = calibrate(stats, name, MethodConfig(symmetric=symmetric))
        e = table.tensors[ZERO]
        assert e.threshold == 0 and e.float_kept and e.note == ZERO_TENSOR_NOTE
        assert not any(t.float_kept for n, t in table.tensors.items() if n != ZERO)


def test_a_review_cannot_unmark_it(setup: Setup) -> None:
    _, stats, _ = setup
    review = Review(default_method="kl", choices={ZERO: Choice(float_kept=False, note="")})
    e = build_table(stats, review).tensors[ZERO]
    assert e.float_kept and e.threshold == 0 and e.note == ZERO_TENSOR_NOTE


def test_quantviz_json_and_csv_write_float_with_threshold_0(setup: Setup) -> None:
    model, _, table = setup
    doc = json.loads(export_bytes(table, "json", ExportOptions(model=model)))
    assert doc["tensors"][ZERO]["float"] is True and doc["tensors"][ZERO]["threshold"] == 0
    csv_text = export_bytes(table, "csv", ExportOptions(model=model)).decode()
    header = csv_text.splitlines()[0].split(",")
    row = next(line.split(",") for line in csv_text.splitlines()[1:] if line.split(",")[0] == ZERO)
    assert float(row[header.index("threshold")]) == 0 and row[header.index("float")] == "true"
    for fmt in ("json", "csv"):
        back = import_bytes(export_bytes(table, fmt, ExportOptions(model=model)), fmt, ExportOptions(model=model)).tensors[ZERO]
        assert back.threshold == 0 and back.float_kept, fmt


@pytest.mark.parametrize("fmt", ["trt", "ort-json", "ort-flatbuffers", "ort-cache"])
def test_engine_tables_leave_it_out_and_never_read_127(setup: Setup, fmt: str) -> None:
    model, _, table = setup
    data = export_bytes(table, fmt, ExportOptions(model=model))
    back = import_bytes(data, fmt, ExportOptions(model=model))
    assert ZERO not in back.tensors  # no range: the engine keeps it in float
    assert "h" in back.tensors and back.tensors["h"].threshold == pytest.approx(table.tensors["h"].threshold, rel=1e-6)


def test_a_trt_cache_with_scale_0_reads_as_zero_kept_float() -> None:
    back = import_bytes(b"TRT-8601-EntropyCalibration2\nz: 0\nh: 3c010204\n", "trt")
    assert back.tensors[ZERO].threshold == 0 and back.tensors[ZERO].float_kept  # not 127
    assert back.tensors["h"].threshold == pytest.approx(1.0, rel=1e-6) and not back.tensors["h"].float_kept


def test_ncnn_writes_it_commented_with_0_and_reads_it_back(setup: Setup) -> None:
    model, _, table = setup
    text = export_bytes(table, "ncnn", ExportOptions(model=model)).decode()
    assert "#fc3 0.000000" in text.splitlines() or "#fc3 0.000000 " in text.splitlines()
    back = import_bytes(text.encode(), "ncnn", ExportOptions(model=model))
    assert back.tensors[ZERO].threshold == 0 and back.tensors[ZERO].float_kept


def test_qdq_model_has_no_quantizer_on_it_and_runs(setup: Setup) -> None:
    model, _, table = setup
    raw = export_bytes(table, "qdq", ExportOptions(model=model))
    qdq = onnx.load_from_string(raw)
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert ZERO not in quantized and "h" in quantized
    sess = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    assert np.isfinite(sess.run(None, {"x": x})[0]).all()
    back = import_bytes(raw, "qdq", ExportOptions(model=model))
    assert ZERO not in back.tensors or back.tensors[ZERO].float_kept


def test_entry_with_threshold_0_is_float_whoever_makes_it() -> None:
    e = TensorEntry(method="override", min=0.0, max=0.0, threshold=0.0, scale=1.0, zero_point=0, float_kept=False, note="mine")
    assert e.float_kept and e.all_zero and e.note == "mine"
